"""Evaluation harness: one method, one reader, a list of QA examples -> EM / F1 / accuracy / cost."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from ..data import QAExample
from ..reader import Reader
from .methods import EvalMethod
from .metrics import compute_scores


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
) -> EvalResult:
    """Answer every example with ``method``'s contexts and score the answers (SQuAD normalisation)."""
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
    )
