"""Paired comparison of two systems' answers to the same questions.

Two heads scored on the same 400 NQ questions differ by less than one unpaired standard error (about 2.4
F1) most of the time, yet most questions get the same answer from both. Differencing per question removes
that shared part: the standard error of the mean per-question difference is what says whether B beats A.

The inputs are the JSONL files ``comprexit-rag eval --predictions`` writes (``id``, ``answers``,
``prediction`` per line); examples are matched by ``id``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from comprexit_rag.data import QAExample
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.evaluation.metrics import answer_contained, exact_match, f1_score

__all__ = ["METRICS", "PairedDifference", "load_predictions", "paired_difference", "write_predictions"]

METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "em": exact_match,
    "f1": f1_score,
    "accuracy": answer_contained,
}


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """B minus A on one metric over ``n`` shared questions (metric values in [0, 1])."""

    metric: str
    n: int
    mean_a: float
    mean_b: float
    difference: float  # mean over questions of b - a
    standard_error: float  # of the mean difference (sample standard deviation / sqrt(n))
    ci_low: float  # percentile bootstrap interval of the mean difference
    ci_high: float
    b_better: int  # questions where B scores higher
    a_better: int
    ties: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def write_predictions(path: str | Path, examples: Sequence[QAExample], predictions: Sequence[str]) -> None:
    """One record per example (``id``, ``question``, ``answers``, ``prediction``), as :func:`load_predictions` reads."""
    with Path(path).open("w") as handle:
        for example, prediction in zip(examples, predictions, strict=True):
            record = {"id": example.id, "question": example.question, "answers": list(example.answers)}
            handle.write(json.dumps({**record, "prediction": prediction}) + "\n")


def load_predictions(path: str | Path) -> dict[str, tuple[tuple[str, ...], str]]:
    """``{id: (answers, prediction)}`` from a ``comprexit-rag eval --predictions`` file."""
    records: dict[str, tuple[tuple[str, ...], str]] = {}
    with Path(path).open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, answers, prediction = str(record["id"]), tuple(record["answers"]), record["prediction"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise InvalidInputError(
                    f"{path}:{number} is not a prediction record ({error}); "
                    "write the file with `comprexit-rag eval --predictions`."
                ) from error
            if key in records:
                raise InvalidInputError(f"{path}:{number} repeats the id {key!r}; each question must appear once.")
            records[key] = (answers, prediction)
    return records


def paired_difference(
    a: dict[str, tuple[tuple[str, ...], str]],
    b: dict[str, tuple[tuple[str, ...], str]],
    metric: str = "f1",
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Compare B with A on the questions both answered, which must be the same questions."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {sorted(METRICS)}.")
    if a.keys() != b.keys():
        only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise InvalidInputError(
            f"The two files answer different questions ({only_a} only in A, {only_b} only in B); "
            "run both evaluations with the same --data, --split and --limit."
        )
    if not a:
        raise InvalidInputError("No predictions to compare.")
    score = METRICS[metric]
    ids = sorted(a)
    for key in ids:
        if a[key][0] != b[key][0]:
            raise InvalidInputError(f"Question {key!r} has different gold answers in the two files.")
    scores_a = [score(a[key][1], a[key][0]) for key in ids]
    scores_b = [score(b[key][1], b[key][0]) for key in ids]
    differences = [y - x for x, y in zip(scores_a, scores_b, strict=True)]
    n = len(differences)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else 0.0
    low, high = _bootstrap_interval(differences, resamples, confidence, seed)
    return PairedDifference(
        metric=metric,
        n=n,
        mean_a=sum(scores_a) / n,
        mean_b=sum(scores_b) / n,
        difference=mean,
        standard_error=math.sqrt(variance / n),
        ci_low=low,
        ci_high=high,
        b_better=sum(d > 0 for d in differences),
        a_better=sum(d < 0 for d in differences),
        ties=sum(d == 0 for d in differences),
    )


def _bootstrap_interval(values: Sequence[float], resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over resamples drawn with replacement."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2
    return means[int(tail * (resamples - 1))], means[math.ceil((1.0 - tail) * (resamples - 1))]
