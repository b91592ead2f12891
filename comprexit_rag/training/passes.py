"""A training batch cut into reading passes that each stay within a budget of padded tokens."""

from __future__ import annotations

from .examples import TrainExample


def reading_passes(batch: list[TrainExample], max_tokens: int | None) -> list[list[TrainExample]]:
    """``batch`` cut into groups read in one pass each: as many examples as keep rows x longest row (passage
    and target tokens) within ``max_tokens``, at least one. ``None``: the whole batch at once.

    Examples are grouped shortest first: a pass's rows are padded to its longest, and a QA batch mixes
    single passages with 20-paragraph questions (padded to the longest row, the batches of the mixed QA
    stage were 3.2x their real tokens; in passes of 32,768 grouped by length, 1.9x). The loss and its
    gradient are sums over examples, so the grouping changes only the order of the sums.
    """
    if max_tokens is None:
        return [batch]
    return cut_in_order(sorted(batch, key=row_tokens), max_tokens)


def row_tokens(example: TrainExample) -> int:
    """Passage and target tokens of an example: the length its reading row is padded against."""
    return sum(len(ids) for ids in example.passage_ids) + len(example.target_ids)


def cut_in_order(examples: list[TrainExample], max_tokens: int) -> list[list[TrainExample]]:
    """``examples`` cut, in the order given, into runs whose rows x longest row stay within ``max_tokens``."""
    passes: list[list[TrainExample]] = [[]]
    longest = 0
    for example in examples:
        size = row_tokens(example)
        if passes[-1] and max(longest, size) * (len(passes[-1]) + 1) > max_tokens:
            passes.append([])
            longest = 0
        passes[-1].append(example)
        longest = max(longest, size)
    return passes
