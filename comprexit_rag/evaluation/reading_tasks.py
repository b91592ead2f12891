"""Held-out reading tasks: questions about a window of text that only that window answers.

The QA stage can train on self-supervised reading tasks (span cloze and "what follows a phrase", made by
:meth:`~comprexit_rag.training.data.PretrainCorpus.sample_reading_tasks`). This module makes the same kinds of
questions about windows of the held-out Wikipedia shard, as ordinary :class:`~comprexit_rag.data.QAExample`
records, so the QA harness scores them like any QA set: from the window's own slots, another window's, closed
book and the raw text. Whether a head answers them from its slots says whether the reader can find an arbitrary
fact of the passage in the slots, not only the kinds of facts the labelled QA data asks about.
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from ..data import Passage, QAExample
from ..prompts import answer_end_token_id
from ..training.data import CLOZE_QUESTION, PretrainCorpus
from .reconstruction import HELD_OUT_SHARD

__all__ = ["READING_TASK_KINDS", "held_out_reading_tasks", "task_kind"]

READING_TASK_KINDS = ("cloze", "follows")


def held_out_reading_tasks(
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    length: int = 128,
    shard: str = HELD_OUT_SHARD,
    stream_tokens: int = 2_000_000,
    seed: int = 0,
) -> list[QAExample]:
    """``count`` reading tasks, each about its own random ``length``-token window of ``shard``'s token stream
    (its first ``stream_tokens``), half span cloze and half "what follows", drawn as the trainer draws them."""
    corpus = PretrainCorpus.build(tokenizer, None, stream_tokens, [shard])
    stop = answer_end_token_id(tokenizer)
    tasks = corpus.sample_reading_tasks(random.Random(seed), count, length, tokenizer, stop)
    return [
        QAExample(
            id=f"{'cloze' if task.question.startswith(CLOZE_QUESTION) else 'follows'}-{i}",
            question=task.question,
            answers=(tokenizer.decode(task.target_ids[:-1]).strip(),),
            passages=(Passage(tokenizer.decode(task.passage_ids[0])),),
            supporting=(0,),
        )
        for i, task in enumerate(tasks)
    ]


def task_kind(example: QAExample) -> str:
    """Which kind of reading task ``example`` is (one of :data:`READING_TASK_KINDS`)."""
    kind = example.id.split("-", 1)[0]
    if kind not in READING_TASK_KINDS:
        raise ValueError(f"{example.id!r} is not a held-out reading task (made by held_out_reading_tasks).")
    return kind
