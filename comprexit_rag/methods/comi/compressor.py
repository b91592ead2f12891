"""COMI: query-aware compression by Marginal Information Gain (MIG), the project's query-aware baseline.

COMI (arXiv 2602.01719; this project's version in ``docs/COMI.md``) reads the passage *and* the
question with the frozen backbone, then

1. coarse stage: starts from ``G = ceil(n / m)`` contiguous near-equal groups of context tokens,
   scores each group by ``MIG = relevance - redundancy`` and reallocates the group sizes to
   ``n * softmax(-MIG)`` (contiguous, ``G`` fixed), so valuable groups are compressed less;
2. fine stage: merges each group into one vector, weighting its tokens by a softmax over the
   group of ``cos(h_i, q) - max_{j != i in group} cos(h_i, h_j)``.

The merged vectors go through the same :class:`~comprexit_rag.methods.projector.SlotProjector` as
ComprExIT (the only trainable part here; the backbone stays frozen). Because the question is
read together with the passage, COMI slots must be computed per question: they cannot be stored
at indexing time like ComprExIT slots.

Departures from the paper: the backbone is frozen (no encoder fine-tuning) and the alignment block
is the ComprExIT projector, so both methods train the same parameters on the same budget. Like a
ComprExIT head, a merger may be trained with a reader adapter (a LoRA on the reading pass only, the
decoder LoRA's place; ``--reader-adapter``): its checkpoint then keeps it in ``reader_adapter/``,
:meth:`COMICompressor.from_pretrained` attaches it, and the slots record that they are read through
it. ``docs/COMI.md`` records how the default layer was chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ...backbone import Backbone
from ...errors import InvalidInputError
from ...soft_context import SoftContext
from ..base import ModuleCompressor
from ..segments import Segment, split_into_segments
from .merger import COMIMerger, encode_pairs, question_token_ids


def _check_fits(backbone: Backbone, segments: Sequence[Segment], question_ids: Sequence[Sequence[int]]) -> None:
    """Refuse a question that does not fit the backbone together with a passage segment (never truncated)."""
    limit = backbone.max_positions
    if limit is None:
        return
    prefix = int(backbone.bos_token_id is not None)
    for segment in segments:
        question = len(question_ids[segment.passage])
        total = prefix + len(segment.token_ids) + question
        if total > limit:
            raise InvalidInputError(
                f"The query of passage {segment.passage} does not fit the backbone: COMI reads a segment of the "
                f"passage ({prefix + len(segment.token_ids)} positions with BOS) followed by the question "
                f"({question} tokens), {total} positions, but {backbone.name} reads at most {limit}. "
                "Shorten the question."
            )


def _check_queries(query: str | Sequence[str] | None, count: int) -> list[str]:
    """One non-empty question per passage (a single string applies to all of them)."""
    if query is None:
        raise InvalidInputError(
            "COMI is query-aware: it reads the question together with each passage. Pass the question "
            "with query='...' (one string for all passages, or one per passage)."
        )
    queries = [query] * count if isinstance(query, str) else query
    if not isinstance(queries, Sequence):
        raise InvalidInputError(f"query must be a string or a list of strings, got {type(query).__name__}.")
    if len(queries) != count:
        raise InvalidInputError(
            f"Got {len(queries)} query strings for {count} passages; pass one query per passage or one string."
        )
    for index, question in enumerate(queries):
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(
                f"Query {index} is empty or not a string: COMI is query-aware and needs the question "
                "(query='...') to compress a passage."
            )
    return list(queries)


class COMICompressor(ModuleCompressor):
    """Query-aware compression: passages + question -> soft slots (ceil(n / m) per 512-token segment).

    Slots depend on the question (``compress(texts, query=...)`` requires it), so they are computed
    per query and never stored.

    >>> compressor = COMICompressor.from_pretrained()
    >>> soft = compressor.compress(["Paris is the capital of France."], query="What is France's capital?")
    """

    kind = "comi"
    query_aware = True
    # Slots of a merger trained for the frozen reader stay unmarked, as they always were: made per query and
    # never stored, they are read by whichever reader the caller picks (the pipeline picks the frozen one).
    frozen_reader_mark = None

    @classmethod
    def from_pretrained(
        cls,
        merger: str | os.PathLike | COMIMerger | None = None,
        backbone: str | os.PathLike | Backbone | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> COMICompressor:
        """Defaults: the embedded SmolLM2 backbone and the COMI merger shipped for it, with the merger's reader
        adapter when its directory has one (see :meth:`~comprexit_rag.methods.base.ModuleCompressor.load`)."""
        return cls.load(COMIMerger, merger, backbone, device=device, batch_size=batch_size)

    @property
    def merger(self) -> COMIMerger:
        return self.module

    @property
    def max_ratio(self) -> int:
        return self.config.max_ratio

    @property
    def trained_ratios(self) -> list[int]:
        return self.config.trained_ratios

    def check_queries(self, query: str | Sequence[str] | None, count: int) -> list[str]:
        return _check_queries(query, count)

    @torch.no_grad()
    def compress_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        query: str | Sequence[str] | None = None,
        *,
        ratio: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Like :meth:`compress`, for passages already tokenised (no special tokens)."""
        ratio = self.checked_ratio(ratio)
        queries = _check_queries(query, len(token_ids))
        if not token_ids:
            return SoftContext.empty(self.backbone.hidden_size)
        question_ids = question_token_ids(self.backbone, queries)
        segments = split_into_segments(token_ids, self.config.segment_length)
        _check_fits(self.backbone, segments, question_ids)
        batch_size = batch_size or self.batch_size
        show = show_progress if show_progress is not None else len(segments) > 4 * batch_size
        slots = encode_pairs(
            self.backbone,
            self.merger,
            [segment.token_ids for segment in segments],
            [question_ids[segment.passage] for segment in segments],
            ratio,
            batch_size,
            show,
        )
        passages: list[list[torch.Tensor]] = [[] for _ in token_ids]
        for segment, segment_slots in zip(segments, slots, strict=True):  # segments are in passage order
            passages[segment.passage].append(segment_slots.float())
        return self.soft_context([torch.cat(parts) for parts in passages], [len(ids) for ids in token_ids])
