"""Tests of the teacher-answered QA pairs (``comprexit_rag.training.teacher_qa``) and ``comprexit-rag teacher-qa``.

Filtering, batching and resuming run with a scripted teacher (its replies are a function of the passage, so
every drop reason is hit on purpose); the command line runs the real readers on the tiny random Llama; one
slow test generates with the real default model and the shipped head's adapter on real 2Wiki passages.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from comprexit_rag.backbone import Backbone
from comprexit_rag.cli import main
from comprexit_rag.commands import teacher_qa as command
from comprexit_rag.data import Passage, load_2wiki_corpus
from comprexit_rag.data.paths import data_root
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.evaluation.metrics import normalize_answer
from comprexit_rag.methods.full_lora import FullLoRA
from comprexit_rag.prompts import answer_end_token_id
from comprexit_rag.reading.adapter import ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.testing import tiny_llama
from comprexit_rag.training import teacher_qa
from comprexit_rag.training.data import QATrainingSet, tokenize_passages
from comprexit_rag.training.teacher_qa import (
    DROP_REASONS,
    SOURCES,
    Teacher,
    about_the_passage,
    in_passage,
    question_of,
    source_passages,
    write_teacher_qa,
)
from comprexit_rag.training.teacher_qa_file import manifest_path, read_teacher_qa
from comprexit_rag.training.trainer import TrainConfig, save_module_and_adapter

SHIPPED_HEAD = Path(__file__).resolve().parents[2] / "comprexit_rag" / "pretrained" / "comprexit-smollm2-135m"


def town(index: int) -> Passage:
    return Passage(text=f"Town {index} was founded by Ada{index}.", title=f"Town {index}", id=f"town/{index}")


class ScriptedTeacher(Teacher):
    """A teacher whose replies depend on the passage's number ``i``, so that every outcome occurs:

    i % 6 == 0: no question; 1: empty answer; 2: an answer over the cap; 3: the closed-book answer is the same
    (normalised); 4: kept; 5: an answer that is not in the passage. A passage titled "Elsewhere" gets a
    question about something it does not mention, one titled "Echo" a question that holds its answer.
    ``fail_on_batch`` raises in that batch's question writing (a kill).
    """

    def __init__(self, backbone: Backbone, fail_on_batch: int | None = None) -> None:
        super().__init__(backbone, adapter=None, max_answer_tokens=8)
        self.batches: list[int] = []  # passages per question-writing call
        self.closed_book_calls: list[int] = []
        self.fail_on_batch = fail_on_batch

    def write_questions(self, passages: list[Passage]) -> list[str]:
        if len(self.batches) == self.fail_on_batch:
            raise KeyboardInterrupt
        self.batches.append(len(passages))
        return [self.reply(passage) for passage in passages]

    @staticmethod
    def reply(passage: Passage) -> str:
        if passage.title == "Elsewhere":
            return "Who won the 2018 Oscar for Best Actress?"
        if passage.title == "Echo":
            return f"Who is Ada{number(passage)}, the founder of Town {number(passage)}?"
        if number(passage) % 6 == 0:
            return f"Town {number(passage)} is a town."
        return f"Question: Who founded Town {number(passage)}?\nMore"

    def answer(self, questions: list[str], passages: list[Passage] | None) -> list[str]:
        if passages is None:
            self.closed_book_calls.append(len(questions))
            return [f"the ada{q.split()[-1][:-1]}." if int(q.split()[-1][:-1]) % 6 == 3 else "Bob" for q in questions]
        replies = {1: " ", 2: " ".join(["word"] * 20), 5: "Adam"}
        return [replies.get(number(p) % 6, f"Ada{number(p)}") for p in passages]


def number(passage: Passage) -> int:
    return int(passage.id.split("/")[1])


def run(out: Path, teacher: Teacher, count: int, limit: int, batch_size: int = 4, source: str = "2wiki") -> dict:
    return write_teacher_qa(
        out, teacher, [town(i) for i in range(count)], source=source, limit=limit, batch_size=batch_size
    )


def test_question_of_keeps_the_first_question_and_drops_replies_that_are_none():
    assert question_of("Question: Who founded Town 3?\nWho else?") == "Who founded Town 3?"
    assert question_of("When was Lloyd released? It was 2001.") == "When was Lloyd released?"
    assert question_of("Teutberga was a queen.") is None
    assert question_of("") is None and question_of("Why?") is None
    assert question_of("What is the answer to this question: who is he?") is None  # about the prompt
    assert question_of("What is the context of this film?") is None
    several = "What is the name of the film, where was it released, and what is the date it was released?"
    assert question_of(several) is None
    assert question_of("What is the name of the person who sings, plays and writes?") is not None


def test_a_question_is_about_the_passage_when_half_its_words_are_the_passages():
    passage = Passage(text="Daniela Sea (born 1977) is an American actress, known for The L Word.", title="Daniela Sea")
    assert about_the_passage("What is the name of the actress who was born in 1977?", passage)
    assert about_the_passage("Which actress is known for The L Word?", passage)
    assert not about_the_passage("Who won the 2018 Oscar for Best Actress in a Comedy?", passage)
    assert not about_the_passage("What is the name of the person?", passage)  # nothing but framing words


def test_pairs_are_kept_only_when_the_answer_needs_the_passage(tiny_backbone, tmp_path):
    teacher = ScriptedTeacher(tiny_backbone)
    passages = [town(i) for i in range(12)] + [Passage(text="word " * 1100, title="Long", id="long/4")]
    passages += [replace(town(7), title="Elsewhere", id="elsewhere/7"), replace(town(4), title="Echo", id="echo/4")]
    manifest = write_teacher_qa(tmp_path / "pairs.jsonl", teacher, passages, source="2wiki", limit=15, batch_size=5)

    records = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [record["id"] for record in records] == ["town/4", "town/10"]
    assert records[0] == {
        "id": "town/4",
        "title": "Town 4",
        "text": "Town 4 was founded by Ada4.",
        "question": "Who founded Town 4?",
        "answer": "Ada4",
        "closed_book": "Bob",
    }
    assert manifest["kept"] == 2 and manifest["passages_read"] == 15
    assert manifest["dropped"] == {
        "long_passage": 1,  # the student would read only its first MAX_PASSAGE_TOKENS
        "no_question": 2,
        "question_not_about_passage": 1,  # none of "won 2018 oscar best actress" is in "Town 7 was founded by Ada7."
        "empty_answer": 2,
        "long_answer": 2,
        "answer_not_in_passage": 2,  # "Adam" is not a word of "Town 5 was founded by Ada5."
        "answer_in_question": 1,
        "closed_book_answer": 2,
    }
    assert json.loads(manifest_path(tmp_path / "pairs.jsonl").read_text()) == manifest
    # Batches of --batch-size passages (less the long one); closed-book only for the pairs still in the running.
    assert teacher.batches == [5, 5, 4]
    assert sum(teacher.closed_book_calls) == 4


def test_a_killed_run_resumes_to_the_file_one_run_writes(tiny_backbone, tmp_path):
    whole = tmp_path / "whole.jsonl"
    run(whole, ScriptedTeacher(tiny_backbone), count=14, limit=14)

    pieces = tmp_path / "pieces.jsonl"
    with pytest.raises(KeyboardInterrupt):  # killed while generating its third batch
        run(pieces, ScriptedTeacher(tiny_backbone, fail_on_batch=2), count=14, limit=14)
    committed = json.loads(manifest_path(pieces).read_text())
    assert committed["passages_read"] == 8
    with pieces.open("ab") as handle:  # and a batch appended, then killed before its commit
        handle.write(b'{"id": "town/9", "title": "Town 9", "text"')
    run(pieces, ScriptedTeacher(tiny_backbone), count=14, limit=10)  # a smaller limit first, then the rest
    resumed = ScriptedTeacher(tiny_backbone)
    run(pieces, resumed, count=14, limit=14)

    assert resumed.batches == [4]  # only the passages not read yet: 10-13
    assert pieces.read_bytes() == whole.read_bytes()
    manifests = [json.loads(manifest_path(path).read_text()) for path in (whole, pieces)]
    for manifest in manifests:
        del manifest["seconds"]
    assert manifests[0] == manifests[1]
    # Nothing left to do: the file is left as it is.
    run(pieces, ScriptedTeacher(tiny_backbone), count=14, limit=14)
    assert pieces.read_bytes() == whole.read_bytes()


def test_a_file_of_another_teacher_source_or_origin_is_refused(tiny_backbone, make_tiny_backbone, tmp_path):
    out = tmp_path / "pairs.jsonl"
    run(out, ScriptedTeacher(tiny_backbone), count=6, limit=6)
    assert out.stat().st_size > 10
    with pytest.raises(InvalidInputError, match=r"source '2wiki' \(this run: 'wikipedia'\).*pass another --out"):
        run(out, ScriptedTeacher(tiny_backbone), count=8, limit=8, source="wikipedia")
    adapted = make_tiny_backbone()
    adapter = ReaderAdapter.create(adapted, ReaderAdapterConfig(rank=2))
    with pytest.raises(InvalidInputError, match="Refusing to append"):
        run(out, Teacher(adapted, adapter, max_answer_tokens=8), count=8, limit=8)

    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"note": 1}\n')
    with pytest.raises(InvalidInputError, match=r"no manifest notes\.manifest\.json"):
        run(foreign, ScriptedTeacher(tiny_backbone), count=4, limit=4)
    out.write_bytes(out.read_bytes()[:10])
    with pytest.raises(InvalidInputError, match="it was cut or replaced"):
        run(out, ScriptedTeacher(tiny_backbone), count=8, limit=8)


def test_a_teacher_file_is_a_qa_training_family(tiny_backbone, tmp_path):
    out = tmp_path / "pairs.jsonl"
    run(out, ScriptedTeacher(tiny_backbone), count=12, limit=12)
    with out.open("ab") as handle:  # an uncommitted line (a run still writing) is not read
        handle.write(b'{"id": "town/99"}\n')
    family = f"teacher:{out}"

    qa = QATrainingSet.build(tiny_backbone.tokenizer, families=[family])
    examples = read_teacher_qa(out)
    assert [e.id for e in examples] == ["teacher/town/4", "teacher/town/10"]
    items = qa.families[family]
    stop = answer_end_token_id(tiny_backbone.tokenizer)
    assert items[0].question == "Who founded Town 4?"
    assert items[0].target_ids == [*tiny_backbone.tokenize(["Ada4"])[0], stop]
    assert items[0].passage_ids == tokenize_passages(tiny_backbone.tokenizer, [town(4)])
    drawn = qa.sample(random.Random(0), 8, distractor_prob=0.0, max_distractors=1)
    assert {example.question for example in drawn} <= {e.question for e in examples}

    config = TrainConfig(method="comprexit", stage="sft", output_dir=str(tmp_path / "run"), qa_families=["nq", family])
    assert config.qa_families == ["nq", family]
    for families in (["teacher:"], ["trivia"]):
        with pytest.raises(InvalidInputError, match=r"qa_families must name some of .* or teacher:FILE"):
            TrainConfig(method="comprexit", stage="sft", output_dir=str(tmp_path / "run"), qa_families=families)
    with pytest.raises(InvalidInputError, match="is not a teacher-QA file"):
        QATrainingSet.build(tiny_backbone.tokenizer, families=[f"teacher:{tmp_path / 'none.jsonl'}"])


def test_sources_read_2wiki_passages_and_wikipedia_windows(tmp_path, monkeypatch):
    words = " ".join(f"w{i}" for i in range(260))
    docs = "".join(
        f'<doc id="{i}" url="u" title="Article {i}">\nArticle {i}\n\n{words[: 300 + i * 1000]}\n</doc>\n'
        for i in range(2)
    )
    (tmp_path / "wiki").mkdir()
    with gzip.open(tmp_path / "wiki" / "enwiki_2015_AB_shard0.txt.gz", "wt") as handle:
        handle.write(docs)
    with gzip.open(tmp_path / "wiki" / "enwiki_2015_AA_shard0.txt.gz", "wt") as handle:  # may hold evaluation titles
        handle.write(docs.replace("Article", "Held out"))
    (tmp_path / "2wiki").mkdir()
    with gzip.open(tmp_path / "2wiki" / "corpus.json.gz", "wt") as handle:
        json.dump(
            [
                {"title": "Lloyd (film)", "text": "Lloyd is a 2001 American comedy film."},
                {"title": "Held Out (band)", "text": "Held Out is a band."},  # an evaluation passage's title
                {"title": "Copy", "text": "An evaluation passage's text."},
            ],
            handle,
        )
    monkeypatch.setattr(
        teacher_qa, "evaluation_passages", lambda root: ({"held out (band)"}, {"An evaluation passage's text."})
    )

    windows = list(source_passages("wikipedia", tmp_path))
    # Article 0 has 300 characters (~60 words: one window); article 1 all 260 words (the first two windows).
    assert [(p.title, p.id, len(p.text.split())) for p in windows] == [
        ("Article 0", "enwiki/0/0", len(words[:300].split())),
        ("Article 1", "enwiki/1/0", 100),
        ("Article 1", "enwiki/1/1", 100),
    ]
    assert list(source_passages("2wiki", tmp_path)) == [
        Passage(text="Lloyd is a 2001 American comedy film.", title="Lloyd (film)", id="2wiki/0")
    ]
    with pytest.raises(InvalidInputError, match="Unknown passage source"):
        next(source_passages("trivia", tmp_path))
    assert command.SOURCES == SOURCES  # the command's copy (parsing imports no torch)


# ---------------------------------------------------------------------------------------------
# The command line, with the real readers on the tiny random Llama.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tiny_backbone, default_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A saved tiny backbone, a 2Wiki corpus of 5 passages (beside the real evaluation splits), and teachers:
    with an adapter, without one, and with an adapter trained for another backbone."""
    root = tmp_path_factory.mktemp("teacher-cli")
    tiny_backbone.model.save_pretrained(root / "backbone")
    tiny_backbone.tokenizer.save_pretrained(root / "backbone")
    (root / "data" / "2wiki").mkdir(parents=True)
    for family in teacher_qa.EVALUATION_FAMILIES:  # the held-out passages the 2Wiki source leaves out
        (root / "data" / family).symlink_to(data_root() / family)
    with gzip.open(root / "data" / "2wiki" / "corpus.json.gz", "wt") as handle:
        json.dump([{"title": p.title, "text": p.text} for p in map(town, range(5))], handle)
    for name, trained_on in (
        ("adapted", tiny_llama(default_tokenizer)),
        ("other", tiny_llama(default_tokenizer, seed=1)),
    ):
        adapter = ReaderAdapter.create(trained_on, ReaderAdapterConfig(rank=2))
        save_module_and_adapter(root / name, FullLoRA.for_backbone(trained_on), adapter)
    FullLoRA.for_backbone(tiny_backbone).save_pretrained(root / "frozen")
    return {name: root / name for name in ("backbone", "data", "adapted", "other", "frozen")}


def cli(tiny_dirs: dict[str, Path], teacher: Path, out: Path, limit: int = 5) -> int:
    argv = ["teacher-qa", "--teacher", teacher, "--source", "2wiki", "--limit", limit, "--out", out]
    argv += ["--data", tiny_dirs["data"], "--backbone", tiny_dirs["backbone"], "--device", "cpu", "--batch-size", 2]
    return main([str(arg) for arg in argv])


def test_cli_writes_and_resumes_a_file_with_the_real_readers(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert cli(tiny_dirs, tiny_dirs["adapted"], out, limit=3) == 0
    assert cli(tiny_dirs, tiny_dirs["adapted"], out, limit=5) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads(manifest_path(out).read_text())
    assert printed["passages_read"] == manifest["passages_read"] == 5
    # The random reader writes no questions; every passage is accounted for all the same.
    assert manifest["kept"] + sum(manifest["dropped"].values()) == 5 and set(manifest["dropped"]) == set(DROP_REASONS)
    assert manifest["teacher"]["reader_adapter"] != "frozen"
    assert manifest["generation"]["max_answer_tokens"] == teacher_qa.MAX_ANSWER_TOKENS


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ("missing", "is not a checkpoint directory"),
        ("other", "was trained for backbone"),
        ("frozen", "Refusing to append"),  # the file below was made by the adapted teacher
    ],
)
def test_cli_refuses_a_bad_teacher_or_another_teachers_file(tiny_dirs, tmp_path, capsys, teacher, message):
    out = tmp_path / "pairs.jsonl"
    assert cli(tiny_dirs, tiny_dirs["adapted"], out, limit=1) == 0
    before = out.read_bytes(), manifest_path(out).read_bytes()
    assert cli(tiny_dirs, tiny_dirs.get(teacher, tmp_path / teacher), out) == 2
    error = capsys.readouterr().err
    assert "comprexit-rag teacher-qa: error:" in error and message in error
    assert (out.read_bytes(), manifest_path(out).read_bytes()) == before


# ---------------------------------------------------------------------------------------------
# The real default model and the shipped head's adapter.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_teacher_writes_well_formed_pairs_for_real_2wiki_passages(real_backbone, tmp_path):
    corpus = data_root() / "2wiki" / "corpus.json.gz"
    if not corpus.is_file():
        pytest.skip(f"no 2Wiki corpus at {corpus}")
    passages = [load_2wiki_corpus(corpus)[i] for i in (0, 1, 4)]
    teacher = Teacher.from_checkpoint(SHIPPED_HEAD, real_backbone)
    assert teacher.adapter is not None
    out = tmp_path / "pairs.jsonl"
    manifest = write_teacher_qa(out, teacher, passages, source="2wiki", limit=3, batch_size=3)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert manifest["passages_read"] == 3 and manifest["kept"] == len(records) >= 1
    assert manifest["kept"] + sum(manifest["dropped"].values()) == 3
    by_id = {p.id: p for p in passages}
    for record in records:
        passage = by_id[record["id"]]
        assert (record["title"], record["text"]) == (passage.title, passage.text)
        assert record["question"].endswith("?") and "\n" not in record["question"]
        assert normalize_answer(record["answer"]) not in ("", normalize_answer(record["closed_book"]))
        assert teacher.answer_tokens(record["answer"]) <= teacher.max_answer_tokens
    assert Counter(e.id for e in read_teacher_qa(out)) == Counter(f"teacher/{r['id']}" for r in records)


def test_an_answer_counts_as_in_the_passage_only_as_whole_words():
    passage = Passage(text="The Art Party was founded in 1921 by A. Smith.", title="Art Party", id="p/1")
    assert in_passage("the art party", passage) and in_passage("1921", passage) and in_passage("A Smith", passage)
    assert (
        not in_passage("art part", passage)
        and not in_passage("1922", passage)
        and not in_passage("Party 1921", passage)
    )


def test_no_2wiki_pair_is_about_a_held_out_passage():
    root = data_root()
    titles, openings = teacher_qa.evaluation_passages(root)
    corpus = load_2wiki_corpus(root / "2wiki" / "corpus.json.gz")
    kept = list(source_passages("2wiki", root))
    assert titles and openings and 0 < len(corpus) - len(kept) < 50  # 11 titles are shared (1 NQ, 10 HotpotQA)
    assert not any(p.title.strip().lower() in titles or p.text.strip()[: teacher_qa.OPENING] in openings for p in kept)
