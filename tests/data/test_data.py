"""Data loaders and fixed splits, checked against the real files in shared/data."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from comprexit_rag.data import (
    SPLIT_SIZES,
    DataNotFoundError,
    Passage,
    QAExample,
    data_root,
    detokenize,
    iter_wikipedia_documents,
    load_2wiki_corpus,
    load_hotpotqa,
    load_musique,
    load_nq_open,
    load_nq_qed,
    load_policyqa,
    load_split,
    load_squad_mrqa,
    normalize_question,
    pretraining_passages,
)
from comprexit_rag.data.splits import sha1_hex


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_root()
    except DataNotFoundError as error:
        pytest.skip(f"shared data directory not available: {error}")


@pytest.fixture(scope="module")
def qed(root: Path) -> list[QAExample]:
    return load_nq_qed(root / "nq/qed")


def _questions(examples: list[QAExample]) -> set[str]:
    return {normalize_question(e.question) for e in examples}


# --- records and paths -------------------------------------------------------------------------


def test_passage_formatted() -> None:
    assert Passage("body", "Title").formatted() == "Title\nbody"
    assert Passage("body").formatted() == "body"


def test_qaexample_gold_passages_and_validation() -> None:
    passages = (Passage("a"), Passage("b"), Passage("c"))
    example = QAExample("q", "?", ("x",), passages, supporting=(2, 0))
    assert example.gold_passages() == (passages[2], passages[0])
    with pytest.raises(ValueError, match="out of range"):
        QAExample("q", "?", ("x",), passages, supporting=(3,))


def test_data_root_explicit_env_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("COMPREXIT_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("COMPREXIT_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="COMPREXIT_DATA"):
        data_root()
    with pytest.raises(FileNotFoundError):
        data_root(tmp_path / "nope")


def test_data_root_searches_upwards_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.delenv("COMPREXIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_detokenize_qed_spacing() -> None:
    assert detokenize("May 18 , 2018 .") == "May 18, 2018."
    assert detokenize("McBurney 's point ( IgG , IgM )") == "McBurney's point (IgG, IgM)"
    assert detokenize("`` le coup '' -- a 200 - kilogram cable") == '"le coup" – a 200-kilogram cable'
    assert detokenize("Celsius ( 1701 -- 1744 ) , who ca n't") == "Celsius (1701–1744), who can't"
    assert detokenize("Cyrus ' policy at 10 : 30 p.m.") == "Cyrus' policy at 10:30 p.m."


def test_normalize_question() -> None:
    assert normalize_question("  Who WROTE 'Hamlet'? ") == "who wrote hamlet"


# --- per-family loaders ------------------------------------------------------------------------


def test_hotpotqa_jsonl_layout(root: Path) -> None:
    examples = load_hotpotqa(root / "hotpotqa/dev_distractor_350.jsonl")
    assert len(examples) == 350
    assert len({e.id for e in examples}) == 350
    first = examples[0]
    assert first.answers == ("Animorphs",)
    assert len(first.supporting) == 2
    assert all(len(e.supporting) == 2 and e.answers for e in examples)
    assert all("  " not in p.text for p in first.passages)


def test_hotpotqa_official_layout(root: Path) -> None:
    examples = load_hotpotqa(root / "hotpotqa/train_distractor_100.json")
    assert len(examples) == 100
    first = examples[0]
    assert first.question == "If Gallu is a demon Lilu is what?"
    assert first.answers == ("a spirit",)
    assert {p.title for p in first.gold_passages()} == {"Alû", "Lilu (mythology)"}
    assert all(e.supporting for e in examples)


def test_musique(root: Path) -> None:
    examples = load_musique(root / "musique/train_100.json")
    assert len(examples) == 100
    first = examples[0]
    assert first.answers == ("G. Stanley Hall", "Stanley Hall")
    assert len(first.passages) == 20
    assert all(len(e.supporting) >= 2 for e in examples)


def test_nq_open(root: Path) -> None:
    examples = load_nq_open(root / "nq/nq_open_oracle_2155.jsonl.gz")
    assert len(examples) == 2155
    assert len({e.id for e in examples}) == 2155
    first = examples[0]
    assert first.answers == ("May 18, 2018",)
    assert first.supporting == (0,)
    assert first.gold_passages()[0].title == "Deadpool 2"


def test_nq_open_reads_plain_jsonl(root: Path, tmp_path: Path) -> None:
    with gzip.open(root / "nq/nq_open_oracle_2155.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, 3))
    plain = tmp_path / "nq.jsonl"
    plain.write_text("".join(lines), encoding="utf-8")
    assert load_nq_open(plain) == load_nq_open(root / "nq/nq_open_oracle_2155.jsonl.gz")[:3]


def test_nq_qed_detokenised(qed: list[QAExample]) -> None:
    examples = qed
    assert len(examples) == 8218
    deadpool = next(e for e in examples if e.passages[0].title == "Deadpool 2")
    assert "May 18, 2018" in deadpool.answers
    assert " , " not in deadpool.passages[0].text and " ." not in deadpool.passages[0].text
    contained = sum(all(a in e.passages[0].text for a in e.answers) for e in examples)
    assert contained == len(examples)


def test_squad_mrqa(root: Path) -> None:
    examples = load_squad_mrqa(root / "squad/squad_v1.1_dev.mrqa.jsonl.gz")
    assert len(examples) == 10507
    assert len({e.passages[0].text for e in examples}) == 2067
    first = examples[0]
    assert first.answers == ("Denver Broncos",)
    assert all(len(set(e.answers)) == len(e.answers) >= 1 for e in examples)


def test_policyqa(root: Path) -> None:
    examples = load_policyqa(root / "policyqa/policyqa_dev.json.gz")
    assert len(examples) == 3809
    first = examples[0]
    assert first.question == "How does this website inform users about their policy changes?"
    assert first.answers == ("Effective July 20, 2012 (last updated October 08, 2013)",)
    assert first.passages[0].title == "ticketmaster.com"
    # Answers are spans of their segment.
    assert all(answer in e.passages[0].text for e in examples for answer in e.answers)


def test_2wiki_corpus(root: Path) -> None:
    passages = load_2wiki_corpus(root / "2wiki/corpus.json.gz")
    assert len(passages) == 6119
    assert passages[0].title == "Teutberga"


def test_wikipedia_documents(root: Path) -> None:
    docs = list(itertools.islice(iter_wikipedia_documents(root / "wiki/enwiki_2015_AA_shard0.txt.gz"), 5))
    assert docs[0].title == "Anarchism"
    assert docs[0].text.startswith("Anarchism is a political philosophy")
    assert all(d.text and not d.text.startswith(d.title + "\n") for d in docs)


def test_wikipedia_skips_empty_docs_and_unescapes_titles(tmp_path: Path) -> None:
    dump = tmp_path / "wiki.txt"
    dump.write_text(
        '<doc id="1" url="u" title="Empty">\nEmpty\n\n</doc>\n'
        '<doc id="2" url="u" title="A &amp; B">\nA &amp; B\n\nA & B is a thing.\n</doc>\n',
        encoding="utf-8",
    )
    assert list(iter_wikipedia_documents([dump])) == [Passage(text="A & B is a thing.", title="A & B", id="enwiki/2")]


def test_pretraining_passages_order(root: Path) -> None:
    first = next(iter(pretraining_passages(root)))
    assert first.title == "Anarchism"


# --- splits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["hotpotqa", "nq", "squad", "musique", "policyqa"])
def test_split_sizes_match_documented(root: Path, family: str) -> None:
    for split, size in SPLIT_SIZES[family].items():
        if family == "musique" and split == "dev":
            continue
        assert len(load_split(family, split, root)) == size


def test_hotpotqa_split(root: Path) -> None:
    dev = load_split("hotpotqa", "dev", root)
    train = load_split("hotpotqa", "train", root)
    assert len(dev) == 200
    assert not {e.id for e in dev} & {e.id for e in train}
    assert not _questions(dev) & _questions(train)
    pool = [json.loads(line)["question_id"] for line in (root / "hotpotqa/dev_distractor_350.jsonl").open()]
    assert {e.id for e in dev} == set(sorted(pool, key=sha1_hex)[:200])


def test_nq_split_disjoint_and_outside_qed(root: Path, qed: list[QAExample]) -> None:
    dev = load_split("nq", "dev", root)
    train = load_split("nq", "train", root)
    assert len(dev) == 400
    assert not _questions(dev) & _questions(train)
    assert len(_questions(train)) == len(train)
    assert not _questions(dev) & _questions(qed)


def test_squad_split_by_context(root: Path) -> None:
    dev = load_split("squad", "dev", root)
    train = load_split("squad", "train", root)
    dev_contexts = {e.passages[0].text for e in dev}
    assert len(dev_contexts) == 300
    assert not dev_contexts & {e.passages[0].text for e in train}
    assert len(dev) + len(train) == 10507


def test_policyqa_split_by_segment(root: Path) -> None:
    dev = load_split("policyqa", "dev", root)
    train = load_split("policyqa", "train", root)
    dev_segments = {e.passages[0].text for e in dev}
    assert dev_segments == set(sorted({e.passages[0].text for e in dev + train}, key=sha1_hex)[:200])
    assert not dev_segments & {e.passages[0].text for e in train}
    assert len(dev) + len(train) == 3809 + 4152


def test_eval_reads_the_policyqa_dev_split_of_either_file(root: Path, monkeypatch) -> None:
    from comprexit_rag.commands.evaluate import load_examples

    monkeypatch.setenv("COMPREXIT_DATA", str(root))
    dev_ids = {e.id for e in load_split("policyqa", "dev", root)}
    found = 0
    for name in ("policyqa_dev.json.gz", "policyqa_test.json.gz"):
        examples = load_examples(str(root / "policyqa" / name), "policyqa", "dev", "gold", None)
        assert examples and {e.id for e in examples} <= dev_ids
        found += len(examples)
    assert found == len(dev_ids)


def test_musique_has_no_dev(root: Path) -> None:
    assert len(load_split("musique", "train", root)) == 100
    with pytest.raises(ValueError, match="no dev split"):
        load_split("musique", "dev", root)


def test_unknown_family_or_split(root: Path) -> None:
    with pytest.raises(ValueError, match="Unknown data family"):
        load_split("trivia", "dev", root)
    with pytest.raises(ValueError, match="Unknown split"):
        load_split("nq", "test", root)


# First dev ids, pinned: a change here means the documented split changed.
PINNED_DEV_PREFIXES = {
    "hotpotqa": ["5a8e3ea95542995a26add48d", "5a85b2d95542997b5ce40028", "5a87ab905542996e4f3088c1"],
    "nq": ["nq-open-0e4283f1102671c9", "nq-open-23a638d3299e8c75", "nq-open-38339eebab2540d6"],
    "squad": ["56be5333acb8001400a5030a", "56be5333acb8001400a5030b", "56be5333acb8001400a5030c"],
}


@pytest.mark.parametrize("family", sorted(PINNED_DEV_PREFIXES))
def test_splits_are_deterministic(root: Path, family: str) -> None:
    assert [e.id for e in load_split(family, "dev", root)[:3]] == PINNED_DEV_PREFIXES[family]
    assert sha1_hex("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d"


def test_split_cache_returns_fresh_lists(root: Path) -> None:
    first = load_split("hotpotqa", "dev", root)
    first.clear()
    assert len(load_split("hotpotqa", "dev", root)) == 200
