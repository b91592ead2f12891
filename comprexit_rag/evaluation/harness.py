"""Evaluation harness: one method, one reader, a list of QA examples -> EM / F1 / accuracy / cost."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from tqdm.auto import tqdm

from ..data import QAExample
from ..errors import AdapterMismatchError, InvalidInputError
from ..reading.reader import Reader
from .methods import EvalMethod
from .metrics import compute_scores

ContextSource = Literal["own", "other"]
CONTEXT_SOURCES: tuple[str, ...] = ("own", "other")


@dataclass
class EvalResult:
    method: str
    ratio: int | None
    em: float
    f1: float
    accuracy: float  # normalised gold answer contained in the prediction
    n: int
    context_tokens: float  # mean source tokens of the context (what "full" reads)
    slots: float  # mean context vectors the reader actually reads (slots, or tokens for text methods)
    seconds_per_question: float
    predictions: list[str] = field(default_factory=list)
    contexts_from: str = "own"  # "other": each question read another example's passages

    def summary(self) -> dict:
        values = asdict(self)
        del values["predictions"]
        return values


def evaluate(
    method: EvalMethod,
    reader: Reader,
    examples: list[QAExample],
    *,
    ratio: int | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
    contexts_from: ContextSource = "own",
) -> EvalResult:
    """Answer every example with ``method``'s contexts and score the answers (SQuAD normalisation).

    ``contexts_from="other"`` gives each question another example's passages (:func:`with_other_contexts`):
    real passages of the same kind, only not its own. The gap between the two scores is what the
    context carries; a method whose score does not drop reads a prior, not the passage.
    """
    if contexts_from not in CONTEXT_SOURCES:
        raise InvalidInputError(f"contexts_from must be one of {CONTEXT_SOURCES}, got {contexts_from!r}.")
    check_reader(method, reader)
    if contexts_from == "other":
        examples = with_other_contexts(examples)
    predictions: list[str] = []
    context_vectors: list[int] = []
    source_tokens = [
        len(ids) for ids in reader.backbone.tokenize(["\n\n".join(p.formatted() for p in e.passages) for e in examples])
    ]
    started = time.perf_counter()
    for start in tqdm(range(0, len(examples), batch_size), desc=method.name, disable=not show_progress):
        batch = examples[start : start + batch_size]
        prepared = method.prepare(batch)
        predictions += reader.generate([e.question for e in batch], prepared.contexts, batch_size=batch_size)
        context_vectors += prepared.context_vectors
    elapsed = time.perf_counter() - started
    scores = compute_scores(predictions, examples)
    count = max(len(examples), 1)
    return EvalResult(
        method=method.name,
        ratio=ratio,
        em=scores.em,
        f1=scores.f1,
        accuracy=scores.accuracy,
        n=scores.n,
        context_tokens=sum(source_tokens) / count,
        slots=sum(context_vectors) / count,
        seconds_per_question=elapsed / count,
        predictions=predictions,
        contexts_from=contexts_from,
    )


def check_reader(method: EvalMethod, reader: Reader) -> None:
    """Refuse a reader without the adapter ``method`` was trained to be read through (``method.reader_adapter``).

    Slots check theirs as they are read; text (a full-lora method's) carries no such mark, so without
    this an evaluation could score the frozen reader under the method's name.
    """
    needed, actual = method.reader_adapter, reader.adapter
    if needed is None or actual is needed or (actual is not None and actual.digest == needed.digest):
        return
    reading = f"adapter {actual.name}" if actual is not None else "the frozen weights"
    raise AdapterMismatchError(
        f"{method.name} was trained to be read through reader adapter {needed.name}, but this reader reads through "
        f"{reading}. Build the reader with Reader(backbone, adapter=method.reader_adapter) (comprexit-rag eval: leave "
        "out --reader-adapter)."
    )


def with_other_contexts(examples: list[QAExample]) -> list[QAExample]:
    """Each example with the passages of the next example (cyclically) whose passages differ from its own.

    Not simply the next example: SQuAD and PolicyQA list several questions of one passage in a row, and
    the next question's passage would often be the question's own.
    """
    texts = [tuple(passage.formatted() for passage in example.passages) for example in examples]
    if len(set(texts)) < 2:
        raise InvalidInputError("Contexts from another example need examples with at least two different contexts.")
    others = []
    for index, example in enumerate(examples):
        step = 1
        while texts[(index + step) % len(examples)] == texts[index]:
            step += 1
        other = examples[(index + step) % len(examples)]
        others.append(replace(example, passages=other.passages, supporting=other.supporting))
    return others
