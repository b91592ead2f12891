"""Training data: a packed token stream for pretraining and QA examples (with distractors) for SFT.

Sampling is a pure function of a ``random.Random`` seeded from (seed, step), so a resumed
run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..backbone import Backbone, encode_text, tokenizer_sha256
from ..data import Passage, QAExample
from ..data.paths import data_root
from ..data.splits import load_split, pretraining_passages
from ..default_model import cache_dir
from ..durable import atomic_write
from ..errors import InvalidInputError
from ..prompts import answer_end_token_id
from ..retrieval.nearest import nearest_passages
from .config import TEACHER_FAMILY_PREFIX
from .examples import TrainExample
from .teacher_qa_file import read_teacher_qa

logger = logging.getLogger(__name__)

CALIBRATION_SEED = 10_002
CALIBRATION_TOKENS = 400_000
# "teacher": each file of teacher-answered questions (``teacher:<path>``, see teacher_qa.py) named in the families.
QA_FAMILY_WEIGHTS = {"squad": 0.4, "nq": 0.4, "hotpotqa": 0.12, "musique": 0.08, "policyqa": 0.2, "teacher": 0.2}
DEFAULT_QA_FAMILIES = ("squad", "nq", "hotpotqa", "musique")  # policyqa (another domain) when asked
MAX_PASSAGE_TOKENS = 1024
# Answer tokens (with the end-of-answer token) a QA training example may have. NQ train holds a few
# whole tables and lists as answers (up to 4,227 tokens): one in a batch pads every row of the reader's
# input to its length (an out-of-memory at batch 32 on an H200). 64 keeps 99% of NQ and all of the rest.
MAX_ANSWER_TOKENS = 64
# How a span-cloze reading task opens (the other kind asks what follows a phrase).
CLOZE_QUESTION = "Fill in the blank:"


def document_separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token between two documents of the pretraining stream: BOS, which opens every segment the head
    reads, else EOS. Not EOS first: conversions of one model disagree on it (transformers 5.17's GGUF converter
    named SmolLM2's BOS as its EOS too, so every stream the long run trained on was joined by BOS)."""
    separator = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if separator is None:
        raise InvalidInputError("The tokenizer has neither a BOS nor an EOS token to separate documents; set one.")
    return separator


def corpus_key(
    tokenizer: PreTrainedTokenizerBase, root: str | None, max_tokens: int | None, wikipedia: Sequence[str] | None
) -> str:
    payload = json.dumps(
        [
            str(data_root(root)),
            list(wikipedia or []),
            max_tokens,
            tokenizer_sha256(tokenizer),
            document_separator(tokenizer),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tokenize_passages(
    tokenizer: PreTrainedTokenizerBase, passages: Iterable[Passage], batch: int = 512
) -> list[list[int]]:
    """Token ids of each passage's "title\\ntext", no special tokens added (special-token strings read as text)."""
    texts = [passage.formatted() for passage in passages]
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch):
        ids.extend(encode_text(tokenizer, texts[start : start + batch]))
    return ids


@dataclass
class PretrainCorpus:
    """Documents packed into one token stream, separated by the EOS token."""

    tokens: np.ndarray

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        root: str | None = None,
        max_tokens: int | None = None,
        wikipedia: Sequence[str] | None = None,
    ) -> PretrainCorpus:
        """Tokenise the pretraining text (see :func:`pretraining_passages`), or reload it from the cache.

        The token stream of a given (data root, shards, tokenizer, cap) is cached under
        ``$COMPREXIT_CACHE/corpus``: a run and its resumed pieces read exactly the same stream.
        """
        key = corpus_key(tokenizer, root, max_tokens, wikipedia)
        cached = cache_dir() / "corpus" / f"{key}.npy"
        if cached.is_file():
            tokens = np.load(cached, mmap_mode="r")
            logger.info("Pretraining corpus: %d tokens (cached %s)", len(tokens), cached)
            return cls(tokens)
        separator = document_separator(tokenizer)
        pieces: list[np.ndarray] = []
        total = 0
        buffer: list[Passage] = []

        def flush() -> None:
            nonlocal total
            for ids in tokenize_passages(tokenizer, buffer):
                pieces.append(np.asarray([*ids, separator], dtype=np.int32))
                total += len(ids) + 1
            buffer.clear()

        progress = tqdm(desc="tokenising pretraining text", unit=" docs", mininterval=10)
        for passage in pretraining_passages(root, wikipedia):
            buffer.append(passage)
            progress.update(1)
            if len(buffer) == 512:
                flush()
                if max_tokens and total >= max_tokens:
                    break
        flush()
        progress.close()
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        tokens = tokens[:max_tokens] if max_tokens else tokens
        cached.parent.mkdir(parents=True, exist_ok=True)

        def save(path: Path) -> None:
            with path.open("wb") as handle:  # a file object: np.save would add ".npy" to a path
                np.save(handle, tokens)

        atomic_write(cached, save)
        logger.info("Pretraining corpus: %d tokens", len(tokens))
        return cls(tokens)

    @property
    def identity(self) -> dict[str, int | str]:
        """Length and a hash of the stream: a resumed run checks it sees the stream it started on."""
        sample = np.ascontiguousarray(self.tokens[:: max(1, len(self.tokens) // 65536)])
        return {"tokens": len(self.tokens), "sha256": hashlib.sha256(sample.tobytes()).hexdigest()[:16]}

    def sample(self, rng: random.Random, batch_size: int, context_length: int, continuation: int) -> list[TrainExample]:
        """Random windows: ``context_length`` tokens to compress, the next ``continuation`` to predict."""
        span = context_length + continuation
        examples = []
        for _ in range(batch_size):
            start = rng.randrange(0, len(self.tokens) - span)
            window = self.tokens[start : start + span].tolist()
            examples.append(TrainExample([window[:context_length]], "", window[context_length:]))
        return examples

    def sample_reconstruction(
        self, rng: random.Random, batch_size: int, context_length: int, stop_id: int
    ) -> list[TrainExample]:
        """Random windows of ``context_length`` tokens to compress; the target is the window itself, then stop."""
        windows = self.sample(rng, batch_size, context_length, continuation=0)
        return [TrainExample.reconstruction(example.passage_ids[0], stop_id) for example in windows]

    def sample_reading_tasks(
        self, rng: random.Random, batch_size: int, context_length: int, tokenizer: PreTrainedTokenizerBase, stop_id: int
    ) -> list[TrainExample]:
        """Questions about a compressed window whose answers only that window holds (no labels needed).

        Half are span cloze (the window's text around a blanked span of 3-10 tokens; the span is the
        answer), half "what follows" (a 6-10 token phrase of the window; the next 8-16 tokens are the
        answer). The compressor sees the intact window: slots stay question-independent.
        """
        examples = []
        for window in self.sample(rng, batch_size, context_length, continuation=0):
            ids = window.passage_ids[0]
            if rng.random() < 0.5:
                length = rng.randint(3, 10)
                start = rng.randrange(1, max(2, len(ids) - length - 1))
                before = tokenizer.decode(ids[max(0, start - 24) : start])
                after = tokenizer.decode(ids[start + length : start + length + 24])
                question = f"{CLOZE_QUESTION} ...{before} ____ {after}..."
                answer = ids[start : start + length]
            else:
                phrase, length = rng.randint(6, 10), rng.randint(8, 16)
                start = rng.randrange(0, max(1, len(ids) - phrase - length))
                question = f'In the context, what comes right after "{tokenizer.decode(ids[start : start + phrase])}"?'
                answer = ids[start + phrase : start + phrase + length]
            examples.append(TrainExample([ids], " ".join(question.split()), [*answer, stop_id]))
        return examples


@dataclass
class QAItem:
    passage_ids: list[list[int]]
    question: str
    target_ids: list[int]
    # Indices into the distractor pool of the passages closest to the question, best first (one-passage
    # examples, when the set is built with retrieved distractors). Random distractors are easy to tell from
    # the gold passage; a retriever's other top hits are about the same thing, and cost the shipped slots
    # half their F1 (BENCHMARKS.md, session 13).
    neighbours: list[int] = field(default_factory=list)


@dataclass
class QATrainingSet:
    """QA training examples per family, plus a pool of passages to draw distractors from."""

    families: dict[str, list[QAItem]]
    distractors: list[list[int]]

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        families: Iterable[str] = DEFAULT_QA_FAMILIES,
        root: str | None = None,
        limit_per_family: int | None = None,
        max_answer_tokens: int = MAX_ANSWER_TOKENS,
        retrieved_distractors: int = 0,
        embedder_device: str | None = None,
    ) -> QATrainingSet:
        """Each family's train split, tokenised; examples whose answer (with the end token) is longer than
        ``max_answer_tokens`` are left out (long-form answers are not what the reader is tuned for).

        With ``retrieved_distractors`` = k, each one-passage example also gets the k passages of the pool
        closest to its question by the retriever's default embedder (all-MiniLM-L6-v2, loaded on
        ``embedder_device`` only if the neighbours are not cached), for :meth:`sample` to use as distractors.
        """
        stop = answer_end_token_id(tokenizer)
        items: dict[str, list[QAItem]] = {}
        pool: list[list[int]] = []
        pool_texts: list[str] = []
        one_passage: list[tuple[QAItem, str]] = []  # the examples that may get distractors, with their passage
        for family in families:
            examples = family_examples(family, root)[:limit_per_family]
            if not examples:
                raise InvalidInputError(f"The {family} training split under {data_root(root)} is empty.")
            passages = [passage for example in examples for passage in example.passages]
            ids = [p[:MAX_PASSAGE_TOKENS] for p in tokenize_passages(tokenizer, passages)]
            answers = encode_text(tokenizer, [example.answers[0] for example in examples])
            family_items, start, too_long = [], 0, 0
            for example, answer in zip(examples, answers, strict=True):
                count = len(example.passages)
                if len(answer) + 1 <= max_answer_tokens:
                    item = QAItem(ids[start : start + count], example.question, [*answer, stop])
                    family_items.append(item)
                    if count == 1:
                        one_passage.append((item, example.passages[0].formatted()))
                else:
                    too_long += 1
                start += count
            items[family] = family_items
            pool.extend(ids)
            pool_texts.extend(passage.formatted() for passage in passages)
            logger.info(
                "QA training set %s: %d examples (%d with answers over %d tokens left out), %d passages",
                family,
                len(family_items),
                too_long,
                max_answer_tokens,
                len(ids),
            )
        if retrieved_distractors:
            attach_neighbours(one_passage, pool_texts, retrieved_distractors, embedder_device)
        return cls(items, pool)

    def neighbours_digest(self) -> str:
        """A hash of every example's neighbours: a resumed run checks that it draws the same distractors."""
        digest = hashlib.sha256()
        for name, family_items in self.families.items():
            digest.update(json.dumps([name, [item.neighbours for item in family_items]]).encode())
        return digest.hexdigest()[:16]

    def sample(
        self,
        rng: random.Random,
        batch_size: int,
        distractor_prob: float,
        max_distractors: int,
        retrieved_share: float = 0.0,
    ) -> list[TrainExample]:
        """Family-weighted examples; single-passage ones sometimes get 1 to ``max_distractors`` distractor
        passages: with probability ``retrieved_share`` the passages closest to the question (as many of its
        neighbours as drawn, best first, as a retriever's top hits), otherwise random ones from the pool."""
        names = list(self.families)
        weights = [family_weight(name) for name in names]
        batch = []
        for family in rng.choices(names, weights=weights, k=batch_size):
            item = rng.choice(self.families[family])
            passages = list(item.passage_ids)
            if len(passages) == 1 and rng.random() < distractor_prob:
                count = rng.randint(1, max_distractors)
                # No draw when the share is 0: the batches stay those of runs made before this option.
                if retrieved_share and item.neighbours and rng.random() < retrieved_share:
                    passages += [self.distractors[index] for index in item.neighbours[:count]]
                else:
                    passages += [rng.choice(self.distractors) for _ in range(count)]
                rng.shuffle(passages)
            batch.append(TrainExample(passages, item.question, item.target_ids))
        return batch


def attach_neighbours(
    items: Sequence[tuple[QAItem, str]],
    pool_texts: Sequence[str],
    k: int,
    device: str | None,
) -> None:
    """Set each (item, its passage's text)'s ``neighbours``: the pool passages closest to its question, other
    than its own text.

    The pool holds a passage once per example that cites it (SQuAD asks several questions of one
    paragraph); the search runs over distinct texts and points at each text's first place in the pool.
    """
    first_place: dict[str, int] = {}
    for index, text in enumerate(pool_texts):
        first_place.setdefault(text, index)
    distinct = list(first_place)
    position = {text: index for index, text in enumerate(distinct)}
    found = nearest_passages(
        [item.question for item, _ in items],
        distinct,
        [[position[text]] for _, text in items],
        k,
        device=device,
    )
    for (item, _), row in zip(items, found, strict=True):
        item.neighbours = [first_place[distinct[index]] for index in row if index >= 0]


def family_examples(family: str, root: str | None) -> list[QAExample]:
    """The train split of a data family, or the pairs of a teacher-QA file (``teacher:<path>``)."""
    if family.startswith(TEACHER_FAMILY_PREFIX):
        return read_teacher_qa(family.removeprefix(TEACHER_FAMILY_PREFIX))
    return load_split(family, "train", root)


def family_weight(family: str) -> float:
    """A QA family's sampling weight; every teacher-QA file weighs ``QA_FAMILY_WEIGHTS["teacher"]``."""
    return QA_FAMILY_WEIGHTS["teacher" if family.startswith(TEACHER_FAMILY_PREFIX) else family]


def calibration_passages(backbone: Backbone, data_root: str | os.PathLike | None) -> list[list[int]]:
    """Fixed Wikipedia windows (64 x 512 tokens, one seed) that calibrate a head's layer standardisation."""
    corpus = PretrainCorpus.build(backbone.tokenizer, data_root, max_tokens=CALIBRATION_TOKENS)
    return [example.passage_ids[0] for example in corpus.sample(random.Random(CALIBRATION_SEED), 64, 512, 0)]
