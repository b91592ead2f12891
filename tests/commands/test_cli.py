"""Tests of the corpus reader and the ``index``, ``ask`` and ``demo`` commands.

The commands run with a tiny random Llama backbone saved to disk (``--backbone``) and a
matching untrained head (``--head``), the real all-MiniLM-L6-v2 embedder and real faiss.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import gzip
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comprexit_rag.cli import build_parser, main
from comprexit_rag.corpus import read_corpus, split_paragraphs
from comprexit_rag.errors import DefaultModelUnavailableError, InvalidInputError
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.slots import content_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama (with the real SmolLM2 tokenizer) and a head for it, saved to disk."""
    from transformers import AutoTokenizer

    from comprexit_rag.default_model import default_backbone_dir
    from comprexit_rag.methods.comprexit.head import ComprExITHead
    from comprexit_rag.testing import tiny_llama

    try:
        tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default tokenizer unavailable: {error}")
    backbone = tiny_llama(tokenizer, max_positions=2048, name="")
    model = backbone.model
    root = tmp_path_factory.mktemp("models")
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    ComprExITHead.for_backbone(backbone).save_pretrained(root / "head")
    return root / "backbone", root / "head"


def cli(*argv: object) -> int:
    return main([str(arg) for arg in argv])


def model_args(model_dirs: tuple[Path, Path]) -> list[str]:
    backbone, head = model_dirs
    return ["--backbone", str(backbone), "--head", str(head)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def manifest_keys(directory: Path) -> list[str]:
    keys = []
    for manifest in directory.glob("slots/*/manifest.jsonl"):
        for line in manifest.read_bytes().split(b"\n")[:-1]:
            record = json.loads(line)
            if record["op"] == "shard":
                keys.extend(entry["key"] for entry in record["entries"])
    return keys


@pytest.fixture
def folder_corpus(tmp_path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "cats.txt").write_text("Cats sleep most of the day.\n\nCats purr when content.", encoding="utf-8")
    (folder / "sub" / "paris.md").write_text("# Paris\n\nParis is the capital of France.", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("Café au lait, naïve façade".encode("latin-1"))  # invalid UTF-8
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.md").write_text("   \n", encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # not a text suffix: ignored
    return folder


# ---------------------------------------------------------------------------------------------
# The corpus reader.
# ---------------------------------------------------------------------------------------------


def test_read_folder_skips_invalid_utf8_and_binary_files(folder_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.corpus"):
        passages = read_corpus(folder_corpus)
    assert [(p.title, p.text) for p in passages] == [
        ("cats", "Cats sleep most of the day.\n\nCats purr when content."),
        ("sub/paris", "# Paris\n\nParis is the capital of France."),
    ]
    assert [p.id for p in passages] == ["cats.txt#0", "sub/paris.md#0"]
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "latin1.txt: not valid UTF-8" in warnings and "binary.txt: it looks binary" in warnings
    assert "empty.md: empty" in warnings and "image.png" not in warnings


def test_split_paragraphs_packs_paragraphs_and_keeps_every_word():
    text = "one two three\n\nfour five\n\n" + " ".join(f"w{i}" for i in range(7))
    chunks = split_paragraphs(text, max_words=5)
    assert chunks == ["one two three\n\nfour five", "w0 w1 w2 w3 w4", "w5 w6"]
    assert split_paragraphs("a  b\r\n\r\n\r\nc", max_words=10) == ["a b\n\nc"]


def test_read_jsonl_hotpotqa_and_2wiki_layouts(tmp_path, caplog):
    records = [
        {"id": 7, "title": "Seven", "text": "Seven is a number."},
        {"title": "No text"},
        {"text": "Untitled passage."},
        {"id": "dup", "title": "Seven", "text": "Seven is a number."},
    ]
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.corpus"):
        passages = read_corpus(write_jsonl(tmp_path / "corpus.jsonl", records))
    assert [(p.id, p.title, p.text) for p in passages] == [
        ("7", "Seven", "Seven is a number."),
        ("", "", "Untitled passage."),
    ]
    assert "skipped 1 records" in caplog.text
    assert len(read_corpus(tmp_path / "corpus.jsonl", limit=1)) == 1

    shared = ["Shared title", ["Shared ", "paragraph."]]
    official = [
        {"_id": "q1", "question": "?", "answer": "a", "context": [shared, ["A", ["Alpha."]]], "supporting_facts": []},
        {"_id": "q2", "question": "?", "answer": "b", "context": [["B", ["Beta."]], shared], "supporting_facts": []},
    ]
    (tmp_path / "hotpot.json").write_text(json.dumps(official), encoding="utf-8")
    assert [p.formatted() for p in read_corpus(tmp_path / "hotpot.json")] == [
        "Shared title\nShared paragraph.",
        "A\nAlpha.",
        "B\nBeta.",
    ]
    subsampled = {
        "question_id": "q3",
        "question_text": "?",
        "answers_objects": [{"spans": ["x"]}],
        "contexts": [{"title": "C", "paragraph_text": "Gamma  rays.", "is_supporting": True}],
    }
    assert read_corpus(write_jsonl(tmp_path / "hotpot.jsonl", [subsampled]))[0].formatted() == "C\nGamma rays."

    with gzip.open(tmp_path / "corpus.json.gz", "wt", encoding="utf-8") as handle:
        json.dump([{"title": "T0", "text": "zero"}, {"title": "T1", "text": "one"}], handle)
    assert [p.id for p in read_corpus(tmp_path / "corpus.json.gz")] == ["2wiki/0", "2wiki/1"]


def test_read_corpus_errors(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"broken.jsonl:2"):
        read_corpus(tmp_path / "broken.jsonl")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_corpus(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="unknown corpus format"):
        read_corpus(tmp_path / "data.csv")
    (tmp_path / "only-binary").mkdir()
    (tmp_path / "only-binary" / "x.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(InvalidInputError, match="no passage"):
        read_corpus(tmp_path / "only-binary")


def test_read_the_shared_data_files():
    from comprexit_rag.data import DataNotFoundError, data_root

    try:
        root = data_root()
    except DataNotFoundError:
        pytest.skip("shared data not available")
    hotpot = read_corpus(root / "hotpotqa" / "dev_distractor_350.jsonl", limit=30)
    assert len(hotpot) == 30 and all(p.title for p in hotpot)
    assert len({p.formatted() for p in hotpot}) == 30
    assert len(read_corpus(root / "hotpotqa" / "train_distractor_100.json", limit=12)) == 12
    wiki = read_corpus(root / "2wiki" / "corpus.json.gz", limit=5)
    assert [p.id for p in wiki] == [f"2wiki/{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------
# The commands.
# ---------------------------------------------------------------------------------------------


def test_commands_are_registered():
    parser = build_parser()
    assert parser.parse_args(["index", "corpus", "--out", "d"]).command == "index"
    assert parser.parse_args(["ask", "d", "question?", "--method", "comi", "--json"]).method == "comi"
    assert parser.parse_args(["demo", "--questions", "2"]).questions == 2


def test_train_flags_given_override_the_config_file_even_at_their_defaults(tmp_path):
    from comprexit_rag.commands.train import options

    experiment = tmp_path / "run.json"
    experiment.write_text(json.dumps({"stage": "sft", "distill_weight": 0.5, "reader_adapter": True, "lr": 0.002}))
    base = ["train", "--config", str(experiment), "--output-dir", str(tmp_path / "out")]
    parser = build_parser()
    from_file = options(parser.parse_args(base))
    assert from_file["distill_weight"] == 0.5 and from_file["reader_adapter"] and from_file["lr"] == 0.002
    given = options(parser.parse_args([*base, "--distill-weight", "0", "--lr", "1e-3", "--compile-layers"]))
    assert given["distill_weight"] == 0.0  # the flag's default, given: it wins over the file
    assert given["lr"] == 1e-3 and given["compile_layers"] is True and given["reader_adapter"] is True
    assert "compile_layers" not in from_file  # neither in the file nor given: the dataclass default applies


def test_index_folder_then_ask_json(tmp_path, folder_corpus, model_dirs, capsys, caplog):
    out = tmp_path / "rag"
    with caplog.at_level(logging.WARNING):
        assert cli("index", folder_corpus, "--out", out, "--no-progress", *model_args(model_dirs)) == 0
    assert "Indexed 2 passages" in capsys.readouterr().out
    assert "not valid UTF-8" in caplog.text and "looks binary" in caplog.text

    assert cli("ask", out, "What is the capital of France?", "--json", "--k", 10, "--max-new-tokens", 3) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1  # exactly one line: one JSON object
    answer = json.loads(stdout)
    assert set(answer) == {"question", "answer", "method", "sources", "timings", "stats"}
    assert [source["title"] for source in answer["sources"]] == ["sub/paris", "cats"]  # k > corpus: all of it
    assert answer["method"] == "comprexit" and answer["stats"]["store_hits"] == 2
    assert set(answer["timings"]) == {"retrieve", "compress", "read", "total"}

    assert cli("ask", out, "Do cats purr?", "--method", "full", "--k", 1, "--max-new-tokens", 2) == 0
    text = capsys.readouterr().out
    assert "Answer (full):" in text and "1. [" in text and "cats" in text and "total" in text

    assert cli("ask", out, "What do they do?", "--search-query", "cats", "--k", 1, "--max-new-tokens", 2, "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["question"] == "What do they do?" and [s["title"] for s in answer["sources"]] == ["cats"]

    assert cli("ask", out, "Do cats purr?", "--method", "closed-book", "--max-new-tokens", 2) == 0
    text = capsys.readouterr().out
    assert "Answer (closed-book):" in text and "Context: no passages;" in text and "1. [" not in text


def test_index_with_another_ratio_switches_only_when_told(tmp_path, folder_corpus, model_dirs, capsys):
    out = tmp_path / "rag"
    assert cli("index", folder_corpus, "--out", out, "--no-progress", *model_args(model_dirs)) == 0
    assert json.loads((out / "pipeline.json").read_text())["ratio"] == 4
    capsys.readouterr()
    assert cli("index", folder_corpus, "--out", out, "--ratio", 8, "--no-progress", *model_args(model_dirs)) == 2
    error = capsys.readouterr().err
    assert "stores its slots at ratio 4, not 8" in error and "--switch-ratio" in error
    assert json.loads((out / "pipeline.json").read_text())["ratio"] == 4
    argv = ["index", folder_corpus, "--out", out, "--ratio", 8, "--switch-ratio", "--no-progress"]
    assert cli(*argv, *model_args(model_dirs)) == 0
    printed = capsys.readouterr().out
    assert "2 compressed" in printed and "(ratio 8," in printed
    assert json.loads((out / "pipeline.json").read_text())["ratio"] == 8


def test_ask_without_a_pipeline_reports_an_error(tmp_path, capsys):
    assert cli("ask", tmp_path / "nothing", "question?") == 2
    assert "holds no pipeline" in capsys.readouterr().err


def test_index_resumes_after_sigkill(tmp_path, model_dirs):
    records = [
        {"id": f"p{i}", "title": f"Topic {i % 11}", "text": f"Passage {i} is about topic {i % 11} and number {i}."}
        for i in range(120)
    ]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "rag"
    argv = ["index", str(corpus), "--out", str(out), "--batch-size", "1", "--chunk-size", "1", "--no-progress"]
    argv += model_args(model_dirs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "comprexit_rag.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    try:
        while len(manifest_keys(out)) < 5:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "indexing did not start in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    committed = len(set(manifest_keys(out)))
    assert 5 <= committed < len(records), "the run should have been killed part-way"

    assert cli(*argv) == 0  # the rerun resumes
    expected = sorted(content_key(f"{r['title']}\n{r['text']}") for r in records)
    assert sorted(manifest_keys(out)) == expected  # nothing lost, nothing stored twice
    pipeline = RAGPipeline.load(out)
    assert pipeline.retriever.ids == [r["id"] for r in records]
    problems = pipeline.store.verify()
    assert all("orphan" in problem or "incomplete" in problem for problem in problems), problems
    assert cli(*argv) == 0 and sorted(manifest_keys(out)) == expected  # a third run changes nothing


def test_demo_on_the_builtin_corpus_and_a_hotpotqa_file(tmp_path, model_dirs, capsys):
    args = ["--questions", 2, "--k", 2, "--max-new-tokens", 2, *model_args(model_dirs)]
    assert cli("demo", "--builtin", "--out", tmp_path / "builtin", *args) == 0
    out = capsys.readouterr().out
    assert "built-in corpus" in out and "Indexed 9 passages" in out
    assert "gold answer: Alexander Fleming" in out and "gold answer: Tanzania" in out
    assert "retrieved (* = supporting): *Penicillin" in out and "slots" in out and "EM" in out
    assert (tmp_path / "builtin" / "builtin_corpus.jsonl").is_file()

    rows = [
        {
            "question_id": f"q{i}",
            "question_text": question,
            "answers_objects": [{"spans": [answer]}],
            "contexts": [
                {"title": title, "paragraph_text": text, "is_supporting": True},
                {"title": "Distractor", "paragraph_text": "Nothing useful here at all.", "is_supporting": False},
            ],
        }
        for i, (question, answer, title, text) in enumerate(
            [
                ("Where is Bonn?", "Germany", "Bonn", "Bonn is a city in Germany."),
                ("What colour is the sky?", "blue", "Sky", "The sky is blue on a clear day."),
            ]
        )
    ]
    hotpot = write_jsonl(tmp_path / "hotpot.jsonl", rows)
    assert cli("demo", "--data", hotpot, "--out", tmp_path / "hotpot", "--method", "full", *args) == 0
    out = capsys.readouterr().out
    assert "HotpotQA file" in out and "Indexed 3 passages" in out and "gold answer: Germany" in out
    assert "*Bonn" in out and "full:" in out
