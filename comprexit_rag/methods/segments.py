"""Cutting tokenised passages into fixed-length segments and batching them for the backbone."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from ..backbone import Backbone

T = TypeVar("T")


@dataclass(frozen=True)
class Segment:
    passage: int  # index of the passage this segment belongs to
    position: int  # order of the segment within its passage
    token_ids: tuple[int, ...]


@dataclass
class SegmentBatch:
    segments: list[Segment]
    input_ids: torch.Tensor  # [B, T] right-padded, BOS first when the tokenizer has one
    attention_mask: torch.Tensor  # [B, T]
    anchor_mask: torch.Tensor  # [B, T] the passage tokens to compress (no BOS, no padding)


def split_into_segments(token_ids: Sequence[Sequence[int]], segment_length: int) -> list[Segment]:
    """Cut every passage into segments of at most ``segment_length`` tokens (nothing is dropped)."""
    segments = []
    for passage, ids in enumerate(token_ids):
        for position, start in enumerate(range(0, max(len(ids), 1), segment_length)):
            segments.append(Segment(passage, position, tuple(ids[start : start + segment_length])))
    return segments


def iter_batches(segments: Sequence[Segment], batch_size: int, bos_token_id: int | None) -> Iterator[SegmentBatch]:
    """Batches of similar-length segments (sorted by length to limit padding)."""
    order = sorted(range(len(segments)), key=lambda i: len(segments[i].token_ids), reverse=True)
    prefix = [bos_token_id] if bos_token_id is not None else []
    for start in range(0, len(order), batch_size):
        chosen = [segments[i] for i in order[start : start + batch_size]]
        length = len(prefix) + max(len(s.token_ids) for s in chosen)
        input_ids = torch.zeros(len(chosen), length, dtype=torch.long)
        attention_mask = torch.zeros(len(chosen), length, dtype=torch.long)
        anchor_mask = torch.zeros(len(chosen), length, dtype=torch.bool)
        for row, segment in enumerate(chosen):
            ids = prefix + list(segment.token_ids)
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            anchor_mask[row, len(prefix) : len(ids)] = True
        yield SegmentBatch(chosen, input_ids, attention_mask, anchor_mask)


def encode_segments(
    backbone: Backbone,
    token_ids: Sequence[Sequence[int]],
    encode: Callable[[SegmentBatch, tuple[torch.Tensor, ...]], list[T]],
    *,
    segment_length: int,
    batch_size: int,
    show_progress: bool | None = None,
) -> list[list[T]]:
    """Run the frozen backbone over every segment and ``encode`` over its hidden states.

    Returns, per passage, the values ``encode`` produced for its segments, in order.
    The backbone runs without gradients; ``encode`` runs in the caller's grad mode.
    """
    segments = split_into_segments(token_ids, segment_length)
    pieces: list[dict[int, T]] = [{} for _ in token_ids]
    total = -(-len(segments) // batch_size)
    show = show_progress if show_progress is not None else total > 4
    batches = iter_batches(segments, batch_size, backbone.bos_token_id)
    for batch in tqdm(batches, total=total, desc="Compressing", unit="batch", disable=not show):
        with torch.no_grad():
            hidden_states = backbone.hidden_states(batch.input_ids, batch.attention_mask)
        for segment, value in zip(batch.segments, encode(batch, hidden_states), strict=True):
            pieces[segment.passage][segment.position] = value
    return [[part[position] for position in sorted(part)] for part in pieces]
