"""Synthetic QA from unlabelled passages: the teacher answers questions the reader writes about each passage.

Labelled QA is ~20k examples; the 2Wiki corpus (6,119 passages, no questions) and the AB-AD Wikipedia
shards (evaluation titles removed) hold many more passages. For each passage:

1. the frozen reader, reading the raw passage, writes one question (:data:`QUESTION_PROMPT`, greedy);
2. the teacher (the reader reading the raw passage through a head's reader adapter, or the frozen reader
   when the head has none) answers it, greedily, in at most ``max_answer_tokens`` (the QA set's cap);
3. the teacher answers the same question closed-book.

A pair is kept only when the question is a question about the passage (half of its words, framing words
left out, are the passage's), the answer is non-empty, short enough, not in the question and found
word for word in the passage (SQuAD-normalised: the 135M teacher's answers that are not in it were mostly
wrong), and it differs from the closed-book answer: every kept target depends on the passage.

The pairs go to a JSON-lines file committed batch by batch by a manifest (:mod:`.teacher_qa_file`): a kill
loses at most the batch in flight, and a rerun goes on from the next passage, so a run in pieces writes the
file one run writes. A training run reads the file as a QA family: ``qa_families: [..., "teacher:<path>"]``
(:func:`~.teacher_qa_file.read_teacher_qa`, :class:`~comprexit_rag.training.data.QATrainingSet`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..backbone import Backbone
from ..checkpoint import CONFIG_NAME
from ..data import Passage, iter_wikipedia_documents, load_2wiki_corpus
from ..data.paths import DataNotFoundError, data_file, data_root
from ..data.splits import TWOWIKI_FILE, load_split
from ..errors import CheckpointError, InvalidInputError
from ..evaluation.metrics import normalize_answer
from ..prompts import QAPrompt
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter
from ..reading.pairing import FROZEN_READER
from ..reading.reader import Reader
from ..validation import check_positive_int
from .data import MAX_ANSWER_TOKENS, MAX_PASSAGE_TOKENS, tokenize_passages
from .teacher_qa_file import FORMAT, commit_batch, open_for_append

__all__ = [
    "DROP_REASONS",
    "SOURCES",
    "Teacher",
    "about_the_passage",
    "in_passage",
    "question_of",
    "source_passages",
    "teacher_pairs",
    "write_teacher_qa",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: answers found in the passage, no evaluation passage; 3: questions about the passage
SOURCES = ("2wiki", "wikipedia")
# The shards whose articles titled like an evaluation passage were removed (shared/data/README.md).
WIKIPEDIA_SHARDS = "wiki/enwiki_2015_A[BCD]_shard*.txt.gz"
# Wikipedia passages are 100-word windows, as NQ-open's passages are; two per article, so that a few
# thousand passages span a few thousand articles rather than a few long ones.
WINDOW_WORDS = 100
WINDOWS_PER_ARTICLE = 2
MIN_WINDOW_WORDS = 50
EVALUATION_FAMILIES = ("nq", "hotpotqa", "squad")  # whose dev passages no pair may be about
OPENING = 200  # characters of a passage that identify it

# The question-writing task, asked in the reader's own QA layout. Of the wordings tried on 2Wiki passages,
# asking for a quiz question about one fact whose answer is a name, place, date or number gave the most
# questions about the passage (others drew "What is the capital of Sweden?", "What a beautiful island!" or
# questions in three parts; with a worked example in the instruction the 135M reader asked about the
# example: 4 and 5 pairs kept of 24 passages against 9, most of them "Where was Marie Curie born?").
QUESTION_TASK = "Write a quiz question about one fact in this context."
QUESTION_PROMPT = QAPrompt(
    instruction="Its answer must be a name, a place, a date or a number from the context. Reply with the question only."
)
MAX_QUESTION_TOKENS = 32
# A question about the prompt rather than the passage ("What is the answer to this question: ...").
_ABOUT_THE_PROMPT = re.compile(r"\b(context|this question|the answer)\b", re.IGNORECASE)
_LABEL = re.compile(r"^(question|q)\s*:\s*", re.IGNORECASE)
# A question in several parts ("What is the name of the film, where was it released, and what is the date?"):
# the teacher answers one part of it, so the pair teaches nothing consistent.
_SEVERAL_PARTS = re.compile(r",\s*(and\s+)?(what|where|when|who|which|how)\b", re.IGNORECASE)

# Words that frame a question rather than say what it is about ("What is the name of the person who ...").
_QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "where", "when", "how", "why")
_AUXILIARIES = ("is", "was", "were", "are", "be", "been", "did", "does", "do", "has", "had", "have")
_FRAME_NOUNS = ("name", "names", "called", "person", "people", "place", "city", "country", "year", "date", "number")
_QUESTION_FRAME = frozenset((*_QUESTION_WORDS, *_AUXILIARIES, *_FRAME_NOUNS, "kind", "type", "one", "first"))
# Of a question's other words, the share the passage must hold: under it, the question mostly asks about
# something the passage does not mention ("... the 2018 Oscar for Best Actress", answered with the passage's
# subject). Set on session 20's hand check (all 12 clean pairs of 30 kept, 10 of the 18 others dropped).
MIN_QUESTION_WORDS_IN_PASSAGE = 0.5

DROP_REASONS = (
    "long_passage",  # over MAX_PASSAGE_TOKENS: the student reads only its beginning (5 of the 6,119 2Wiki passages)
    "no_question",  # the reader wrote no question (no "?" on its first line), one about the prompt or in parts
    "question_not_about_passage",  # under MIN_QUESTION_WORDS_IN_PASSAGE of its words are in the passage
    "empty_answer",  # the teacher's answer is empty once normalised
    "long_answer",  # with the end token, over max_answer_tokens (QATrainingSet would leave it out)
    "answer_not_in_passage",  # not a span of the passage once normalised: mostly a wrong or invented answer
    "answer_in_question",  # the question already holds its answer: nothing to read
    "closed_book_answer",  # the teacher answers the same closed-book: the target does not need the passage
)


# ---------------------------------------------------------------------------------------------
# The passages.
# ---------------------------------------------------------------------------------------------


def source_passages(source: str, root: str | os.PathLike | None = None) -> Iterator[Passage]:
    """The unlabelled passages of ``source``, always in the same order.

    ``2wiki``: the 2WikiMultihopQA corpus, in file order. ``wikipedia``: the first
    :data:`WINDOWS_PER_ARTICLE` windows of :data:`WINDOW_WORDS` words of each article of the AB-AD
    shards (shards in name order; windows under :data:`MIN_WINDOW_WORDS` words are left out).
    """
    if source == "2wiki":
        # Unlike the AB-AD shards, the 2Wiki corpus was not cleared of evaluation passages (1 NQ and 10 HotpotQA
        # dev titles are in it): those are left out, so no generated pair is about a held-out passage.
        titles, openings = evaluation_passages(root)
        for passage in load_2wiki_corpus(data_file(TWOWIKI_FILE, root)):
            if passage.title.strip().lower() not in titles and passage.text.strip()[:OPENING] not in openings:
                yield passage
    elif source == "wikipedia":
        base = data_root(root)
        shards = sorted(base.glob(WIKIPEDIA_SHARDS))
        if not shards:
            raise DataNotFoundError(f"No Wikipedia shards matching {WIKIPEDIA_SHARDS} under {base}.")
        for article in iter_wikipedia_documents(shards):
            words = article.text.split()
            for index in range(WINDOWS_PER_ARTICLE):
                window = words[index * WINDOW_WORDS : (index + 1) * WINDOW_WORDS]
                if len(window) < MIN_WINDOW_WORDS:
                    break
                yield Passage(text=" ".join(window), title=article.title, id=f"{article.id}/{index}")
    else:
        raise InvalidInputError(f"Unknown passage source {source!r}; expected one of {', '.join(SOURCES)}.")


def evaluation_passages(root: str | os.PathLike | None) -> tuple[set[str], set[str]]:
    """The lower-cased titles and the openings (first :data:`OPENING` characters) of the passages of the
    evaluation families' dev splits."""
    passages = [
        p for family in EVALUATION_FAMILIES for example in load_split(family, "dev", root) for p in example.passages
    ]
    titles = {passage.title.strip().lower() for passage in passages if passage.title.strip()}
    return titles, {passage.text.strip()[:OPENING] for passage in passages}


# ---------------------------------------------------------------------------------------------
# The teacher.
# ---------------------------------------------------------------------------------------------


class Teacher:
    """The reader that answers (through a head's reader adapter, or frozen) and the frozen reader that asks.

    The frozen instruct model writes the questions: an adapter tuned to answer in a short phrase answers
    the question-writing task instead (the shipped adapter wrote "Ermengarde of Tours" where the frozen
    reader wrote a question).
    """

    def __init__(
        self, backbone: Backbone, adapter: ReaderAdapter | None, max_answer_tokens: int = MAX_ANSWER_TOKENS
    ) -> None:
        self.backbone = backbone
        self.adapter = adapter
        self.max_answer_tokens = check_positive_int(max_answer_tokens, "max_answer_tokens")
        self.asker = Reader(backbone, QUESTION_PROMPT, MAX_QUESTION_TOKENS, adapter=None)
        # Up to the cap itself: an answer that reaches it is over the cap once the end token is added.
        self.reader = Reader(backbone, max_new_tokens=max_answer_tokens, adapter=adapter)

    @classmethod
    def from_checkpoint(
        cls, directory: str | os.PathLike, backbone: Backbone, max_answer_tokens: int = MAX_ANSWER_TOKENS
    ) -> Teacher:
        """The teacher of a trained head's checkpoint: its ``reader_adapter/``, or the frozen reader without one.

        The adapter is loaded as every reader loads one (:meth:`ReaderAdapter.from_pretrained`), which refuses
        an adapter trained for another backbone.
        """
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"Teacher {directory} is not a checkpoint directory (no {CONFIG_NAME}); pass a trained head's "
                f"directory (e.g. a run's final/ or comprexit_rag/pretrained/comprexit-smollm2-135m): its "
                f"{ADAPTER_DIR}/ reads the passages, or the frozen reader does when it has none."
            )
        adapter = None
        if (directory / ADAPTER_DIR).is_dir():
            adapter = ReaderAdapter.from_pretrained(directory / ADAPTER_DIR, backbone)
        else:
            logger.info("%s has no %s/: the frozen reader answers", directory, ADAPTER_DIR)
        return cls(backbone, adapter, max_answer_tokens)

    @property
    def identity(self) -> dict[str, str]:
        """What the pairs depend on: the backbone's weights and dtype (bfloat16 on a GPU answers otherwise than
        float32 on a CPU), and the reader adapter's weights (or the frozen reader)."""
        adapter = self.adapter.digest if self.adapter is not None else FROZEN_READER
        backbone = self.backbone
        return {"backbone": backbone.fingerprint.digest, "dtype": str(backbone.dtype), "reader_adapter": adapter}

    def write_questions(self, passages: list[Passage]) -> list[str]:
        """The frozen reader's raw reply to the question-writing task, per passage (one batch)."""
        texts = [passage.formatted() for passage in passages]
        return self.asker.generate([QUESTION_TASK] * len(texts), texts, batch_size=max(1, len(texts)))

    def answer(self, questions: list[str], passages: list[Passage] | None) -> list[str]:
        """The teacher's answers, reading the passages (one per question) or closed-book (``None``)."""
        contexts = [passage.formatted() for passage in passages] if passages is not None else None
        return self.reader.generate(questions, contexts, batch_size=max(1, len(questions)))

    def answer_tokens(self, answer: str) -> int:
        """Tokens of an answer as QATrainingSet tokenises it, with the end token."""
        return len(self.backbone.tokenize([answer])[0]) + 1


def question_of(reply: str) -> str | None:
    """The question in the reader's reply: its first line up to the first "?" (a "Question:" label dropped),
    or ``None`` when there is none, it asks about the prompt rather than the passage, or it has several parts."""
    lines = reply.strip().splitlines()
    line = _LABEL.sub("", lines[0].strip()) if lines else ""
    end = line.find("?")
    if end < 0:
        return None
    question = line[: end + 1].strip()
    if len(question.split()) < 3 or _ABOUT_THE_PROMPT.search(question) or _SEVERAL_PARTS.search(question):
        return None
    return question


def about_the_passage(question: str, passage: Passage) -> bool:
    """Whether at least :data:`MIN_QUESTION_WORDS_IN_PASSAGE` of the question's words, its framing words
    left out, are words of the passage (title included), both SQuAD-normalised."""
    words = [word for word in normalize_answer(question).split() if word not in _QUESTION_FRAME and len(word) > 1]
    if not words:
        return False
    passage_words = set(normalize_answer(passage.formatted()).split())
    return sum(word in passage_words for word in words) >= MIN_QUESTION_WORDS_IN_PASSAGE * len(words)


def holds_words(text: str, words: str) -> bool:
    """Whether ``words`` is a run of whole words of ``text``, both SQuAD-normalised."""
    return f" {normalize_answer(words)} " in f" {normalize_answer(text)} "


def in_passage(answer: str, passage: Passage) -> bool:
    """Whether the answer is a run of whole words of the passage (title included)."""
    return holds_words(passage.formatted(), answer)


def teacher_pairs(teacher: Teacher, passages: list[Passage]) -> tuple[list[dict[str, str]], Counter[str]]:
    """The kept pair records of ``passages`` (one batch) and the count of the others by drop reason."""
    dropped: Counter[str] = Counter()
    lengths = map(len, tokenize_passages(teacher.backbone.tokenizer, passages))
    readable = [passage for passage, length in zip(passages, lengths, strict=True) if length <= MAX_PASSAGE_TOKENS]
    dropped["long_passage"] = len(passages) - len(readable)
    questions = []
    if readable:
        replies = teacher.write_questions(readable)
        questions = [(p, q) for p, q in zip(readable, map(question_of, replies), strict=True) if q is not None]
    dropped["no_question"] = len(readable) - len(questions)
    asked = [(passage, question) for passage, question in questions if about_the_passage(question, passage)]
    dropped["question_not_about_passage"] = len(questions) - len(asked)
    answered = []
    if asked:
        answers = teacher.answer([q for _, q in asked], [p for p, _ in asked])
        for (passage, question), answer in zip(asked, answers, strict=True):
            if not normalize_answer(answer):
                dropped["empty_answer"] += 1
            elif teacher.answer_tokens(answer) > teacher.max_answer_tokens:
                dropped["long_answer"] += 1
            elif not in_passage(answer, passage):
                dropped["answer_not_in_passage"] += 1
            elif holds_words(question, answer):
                dropped["answer_in_question"] += 1
            else:
                answered.append((passage, question, answer))
    records = []
    if answered:
        # Closed-book only for the pairs still in the running: a generation pass spared for the dropped ones.
        closed = teacher.answer([q for _, q, _ in answered], None)
        for (passage, question, answer), closed_book in zip(answered, closed, strict=True):
            if normalize_answer(answer) == normalize_answer(closed_book):
                dropped["closed_book_answer"] += 1
                continue
            records.append(
                {
                    "id": passage.id,
                    "title": passage.title,
                    "text": passage.text,
                    "question": question,
                    "answer": answer,
                    "closed_book": closed_book,
                }
            )
    return records, dropped


# ---------------------------------------------------------------------------------------------
# Writing the file.
# ---------------------------------------------------------------------------------------------


def write_teacher_qa(
    out: str | os.PathLike,
    teacher: Teacher,
    passages: Iterable[Passage],
    *,
    source: str,
    limit: int,
    batch_size: int = 16,
    checkpoint: str | os.PathLike = "",
) -> dict[str, Any]:
    """Append the teacher's pairs for the first ``limit`` of ``passages`` (of ``source``) to ``out``.

    Resumes a file this teacher started on this source: the passages its manifest counts as read are
    skipped (rerun with a larger ``limit`` to go on). Returns the manifest.

    Raises:
        InvalidInputError: ``out`` was written by another teacher, from another source or with other
            settings, or is not a teacher-QA file (no manifest), or is shorter than its manifest says.
    """
    check_positive_int(limit, "limit")
    check_positive_int(batch_size, "batch_size")
    out = Path(out)
    identity = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "teacher": teacher.identity,
        "source": source,
        "generation": {
            "question_task": QUESTION_TASK,
            "question_instruction": QUESTION_PROMPT.instruction,
            "max_question_tokens": MAX_QUESTION_TOKENS,
            "answer_instruction": teacher.reader.prompt.instruction,
            "max_answer_tokens": teacher.max_answer_tokens,
        },
    }
    manifest = open_for_append(out, identity, DROP_REASONS)
    manifest["teacher_checkpoint"] = str(checkpoint)
    done = manifest["passages_read"]
    progress = tqdm(total=limit, initial=min(done, limit), desc="teacher-qa", unit=" passages", mininterval=5)
    pending = islice(passages, done, limit)
    while batch := list(islice(pending, batch_size)):
        started = time.perf_counter()
        records, dropped = teacher_pairs(teacher, batch)
        commit_batch(out, manifest, records, len(batch), dropped, time.perf_counter() - started)
        progress.update(len(batch))
        progress.set_postfix(kept=manifest["kept"])
    progress.close()
    logger.info(
        "%s: %d pairs kept of %d passages read (dropped: %s) in %.0f s",
        out,
        manifest["kept"],
        manifest["passages_read"],
        ", ".join(f"{reason} {count}" for reason, count in manifest["dropped"].items()),
        manifest["seconds"],
    )
    return manifest
