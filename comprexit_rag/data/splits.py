"""Fixed, documented train/dev splits for model selection.

Every choice hashes a stable key with SHA-1 (``hashlib``, never Python's salted ``hash()``), sorts
by ``(digest, key)`` and takes a prefix, so the split is the same on every machine and run. Files
are read from :func:`comprexit_rag.data.paths.data_root`.

Rules
-----
hotpotqa
    dev: the 200 questions of ``hotpotqa/dev_distractor_350.jsonl`` whose ``sha1(question_id)``
    sort first. train: the other 150 of that file plus all of ``hotpotqa/train_distractor_100.json``
    (any train question whose normalised text equals a dev question is dropped; none are).
nq
    dev: 400 questions of ``nq/nq_open_oracle_2155.jsonl.gz`` whose normalised question does not
    occur in QED, chosen by ``sha1(normalised question)``. train: the rest of the oracle file, then
    every QED file (``nq/qed/nq-{train,dev}-*-qed.jsonl.gz``), with questions whose normalised text
    equals a dev question removed and duplicates removed by normalised question text, keeping the
    first occurrence (so the ~755 questions shared by the oracle file and QED keep the oracle row).
squad
    Split by context: the 300 distinct contexts of ``squad/squad_v1.1_dev.mrqa.jsonl.gz`` whose
    ``sha1(context text)`` sort first go to dev with all their questions; the rest go to train.
musique
    train: all of ``musique/train_100.json``. There is no dev split (asking for one raises).
policyqa
    Another domain (website privacy policies), for training; no evaluation family of the project.
    Both files (``policyqa/policyqa_{dev,test}.json.gz``) are pooled and split by policy segment like
    squad: the 200 distinct segments whose ``sha1(segment text)`` sort first go to dev with all their
    questions (an out-of-domain check); the rest go to train.

Question normalisation is :func:`comprexit_rag.data.text.normalize_question` (NFKC, lower case,
punctuation removed, whitespace collapsed). Examples keep file order within each split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from comprexit_rag.data.hotpotqa import load_hotpotqa
from comprexit_rag.data.musique import load_musique
from comprexit_rag.data.nq import load_nq_open, load_nq_qed
from comprexit_rag.data.paths import DataNotFoundError, data_file, data_root
from comprexit_rag.data.policyqa import load_policyqa
from comprexit_rag.data.records import Passage, QAExample
from comprexit_rag.data.squad import load_squad_mrqa
from comprexit_rag.data.text import normalize_question
from comprexit_rag.data.twowiki import load_2wiki_corpus
from comprexit_rag.data.wikipedia import iter_wikipedia_documents
from comprexit_rag.errors import InvalidInputError

__all__ = ["FAMILIES", "SPLITS", "SPLIT_SIZES", "load_split", "pretraining_passages", "sha1_hex"]

FAMILIES: tuple[str, ...] = ("hotpotqa", "nq", "squad", "musique", "policyqa")
SPLITS: tuple[str, ...] = ("train", "dev")

HOTPOTQA_DEV_FILE = "hotpotqa/dev_distractor_350.jsonl"
HOTPOTQA_TRAIN_FILE = "hotpotqa/train_distractor_100.json"
NQ_OPEN_FILE = "nq/nq_open_oracle_2155.jsonl.gz"
NQ_QED_DIR = "nq/qed"
SQUAD_FILE = "squad/squad_v1.1_dev.mrqa.jsonl.gz"
MUSIQUE_FILE = "musique/train_100.json"
POLICYQA_FILES = ("policyqa/policyqa_dev.json.gz", "policyqa/policyqa_test.json.gz")
TWOWIKI_FILE = "2wiki/corpus.json.gz"
WIKIPEDIA_GLOB = "wiki/enwiki_2015_AA_shard*.txt.gz"

HOTPOTQA_DEV_SIZE = 200
NQ_DEV_SIZE = 400
SQUAD_DEV_CONTEXTS = 300
POLICYQA_DEV_SEGMENTS = 200

#: Number of examples in each split, as measured on the shared data (see the module docstring).
#: squad dev/train hold 300 / 1,767 contexts.
SPLIT_SIZES: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "hotpotqa": MappingProxyType({"train": 250, "dev": 200}),
        "nq": MappingProxyType({"train": 9218, "dev": 400}),
        "squad": MappingProxyType({"train": 8997, "dev": 1510}),
        "musique": MappingProxyType({"train": 100, "dev": 0}),
        "policyqa": MappingProxyType({"train": 6556, "dev": 1405}),
    }
)


def sha1_hex(key: str) -> str:
    """Hex SHA-1 of the UTF-8 encoding of ``key``: the stable hash every split uses."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _first_by_hash(keys: Iterable[str], count: int) -> frozenset[str]:
    """The ``count`` distinct keys whose ``(sha1(key), key)`` sort first."""
    return frozenset(sorted(set(keys), key=lambda k: (sha1_hex(k), k))[:count])


def _split_by(
    examples: Iterable[QAExample], key: Callable[[QAExample], str], dev_keys: frozenset[str]
) -> tuple[list[QAExample], list[QAExample]]:
    """Partition ``examples`` into (train, dev) by whether ``key(example)`` is a dev key."""
    train: list[QAExample] = []
    dev: list[QAExample] = []
    for example in examples:
        (dev if key(example) in dev_keys else train).append(example)
    return train, dev


def _question_key(example: QAExample) -> str:
    return normalize_question(example.question)


def _drop_questions(examples: Iterable[QAExample], banned: Iterable[str]) -> list[QAExample]:
    """Drop examples whose normalised question is banned or already seen (first one wins)."""
    seen = set(banned)
    kept = []
    for example in examples:
        key = _question_key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def _hotpotqa(root: Path) -> tuple[list[QAExample], list[QAExample]]:
    pool = load_hotpotqa(data_file(HOTPOTQA_DEV_FILE, root))
    dev_ids = _first_by_hash((e.id for e in pool), HOTPOTQA_DEV_SIZE)
    rest, dev = _split_by(pool, lambda e: e.id, dev_ids)
    extra = load_hotpotqa(data_file(HOTPOTQA_TRAIN_FILE, root))
    train = _drop_questions([*rest, *extra], (_question_key(e) for e in dev))
    return train, dev


def _nq(root: Path) -> tuple[list[QAExample], list[QAExample]]:
    oracle = load_nq_open(data_file(NQ_OPEN_FILE, root))
    qed_files = sorted(data_file(NQ_QED_DIR, root).glob("nq-*-qed.jsonl.gz"))
    if not qed_files:
        raise DataNotFoundError(f"No nq-*-qed.jsonl.gz files under {data_file(NQ_QED_DIR, root)}.")
    qed = load_nq_qed(qed_files)
    qed_questions = {_question_key(e) for e in qed}
    candidates = [_question_key(e) for e in oracle if _question_key(e) not in qed_questions]
    dev_questions = _first_by_hash(candidates, NQ_DEV_SIZE)
    rest, dev = _split_by(oracle, _question_key, dev_questions)
    return _drop_questions([*rest, *qed], dev_questions), dev


def _squad(root: Path) -> tuple[list[QAExample], list[QAExample]]:
    examples = load_squad_mrqa(data_file(SQUAD_FILE, root))
    dev_contexts = _first_by_hash((e.passages[0].text for e in examples), SQUAD_DEV_CONTEXTS)
    return _split_by(examples, lambda e: e.passages[0].text, dev_contexts)


def _musique(root: Path) -> tuple[list[QAExample], list[QAExample]]:
    return load_musique(data_file(MUSIQUE_FILE, root)), []


def _policyqa(root: Path) -> tuple[list[QAExample], list[QAExample]]:
    examples = [example for name in POLICYQA_FILES for example in load_policyqa(data_file(name, root))]
    dev_segments = _first_by_hash((e.passages[0].text for e in examples), POLICYQA_DEV_SEGMENTS)
    return _split_by(examples, lambda e: e.passages[0].text, dev_segments)


_BUILDERS: Mapping[str, Callable[[Path], tuple[list[QAExample], list[QAExample]]]] = MappingProxyType(
    {"hotpotqa": _hotpotqa, "nq": _nq, "squad": _squad, "musique": _musique, "policyqa": _policyqa}
)


@lru_cache(maxsize=8)
def _cached_split(family: str, root: Path) -> Mapping[str, tuple[QAExample, ...]]:
    train, dev = _BUILDERS[family](root)
    return MappingProxyType({"train": tuple(train), "dev": tuple(dev)})


def load_split(family: str, split: str, root: str | os.PathLike[str] | None = None) -> list[QAExample]:
    """Return the ``split`` ("train" or "dev") of ``family`` (see the module docstring for rules).

    Results are cached per (family, data root); the returned list is a fresh copy.
    """
    if family not in _BUILDERS:
        raise InvalidInputError(f"Unknown data family {family!r}; expected one of {', '.join(FAMILIES)}.")
    if split not in SPLITS:
        raise InvalidInputError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    if family == "musique" and split == "dev":
        raise InvalidInputError(
            "MuSiQue has no dev split: its 100 questions are all for training. Use hotpotqa, nq or "
            "squad for model selection."
        )
    return list(_cached_split(family, data_root(root).resolve())[split])


def pretraining_passages(
    root: str | os.PathLike[str] | None = None, wikipedia: Sequence[str] | None = None
) -> Iterator[Passage]:
    """Yield Wikipedia documents (shards in name order), then, for the default shards, the 2Wiki passages.

    ``wikipedia``: glob patterns under the data root (e.g. ``["wiki/enwiki_2015_AB_shard*.txt.gz"]``)
    naming the shards to read instead of the default AA shards; the 2Wiki corpus is then left out.
    """
    base = data_root(root)
    patterns = list(wikipedia) if wikipedia else [WIKIPEDIA_GLOB]
    shards = sorted({path for pattern in patterns for path in base.glob(pattern)})
    if not shards:
        raise DataNotFoundError(f"No Wikipedia shards matching {', '.join(patterns)} under {base}.")
    yield from iter_wikipedia_documents(shards)
    if not wikipedia:
        yield from load_2wiki_corpus(data_file(TWOWIKI_FILE, base))
