"""Cutting tokenised passages into fixed-length segments and batching them for the backbone."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..layout import concatenated_ranges

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


def iter_batches(
    segments: Sequence[Segment], batch_size: int, bos_token_id: int | None, max_tokens: int | None = None
) -> Iterator[SegmentBatch]:
    """Batches of similar-length segments (sorted by length to limit padding).

    Each holds at most ``batch_size`` segments and, with ``max_tokens``, at most that many padded
    tokens (rows x the longest row, BOS included; always at least one segment).
    """
    order = sorted(range(len(segments)), key=lambda i: len(segments[i].token_ids), reverse=True)
    prefix = [bos_token_id] if bos_token_id is not None else []
    start = 0
    while start < len(order):
        longest = len(prefix) + len(segments[order[start]].token_ids)  # sorted: the first is the longest
        rows = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // longest))
        chosen = [segments[i] for i in order[start : start + rows]]
        start += rows
        yield _segment_batch(chosen, prefix)


def _segment_batch(chosen: list[Segment], prefix: list[int]) -> SegmentBatch:
    """The segments right-padded into host tensors, built with numpy (no torch operation per row)."""
    lengths = np.asarray([len(prefix) + len(segment.token_ids) for segment in chosen], dtype=np.int64)
    width = int(lengths.max())
    real = concatenated_ranges(np.arange(len(chosen), dtype=np.int64) * width, lengths)
    input_ids = np.zeros((len(chosen), width), dtype=np.int64)
    input_ids.flat[real] = [token for segment in chosen for token in (*prefix, *segment.token_ids)]
    attention_mask = np.zeros_like(input_ids)
    attention_mask.flat[real] = 1
    anchor_mask = attention_mask.astype(bool)
    anchor_mask[:, : len(prefix)] = False
    return SegmentBatch(
        chosen, torch.from_numpy(input_ids), torch.from_numpy(attention_mask), torch.from_numpy(anchor_mask)
    )


def encode_segments(
    backbone: Backbone,
    token_ids: Sequence[Sequence[int]],
    encode: Callable[[SegmentBatch, tuple[torch.Tensor, ...]], list[T]],
    *,
    segment_length: int,
    batch_size: int,
    max_tokens: int | None = None,
    show_progress: bool | None = None,
) -> list[list[T]]:
    """Run the frozen backbone over every segment and ``encode`` over its hidden states.

    Returns, per passage, the values ``encode`` produced for its segments, in order. Segments go
    through the backbone ``batch_size`` at a time, and at most ``max_tokens`` padded tokens at a time.
    The backbone runs without gradients; ``encode`` runs in the caller's grad mode.
    """
    segments = split_into_segments(token_ids, segment_length)
    pieces: list[dict[int, T]] = [{} for _ in token_ids]
    batches = list(iter_batches(segments, batch_size, backbone.bos_token_id, max_tokens))  # host tensors
    show = show_progress if show_progress is not None else len(batches) > 4
    for batch in tqdm(batches, desc="Compressing", unit="batch", disable=not show):
        with torch.no_grad():
            hidden_states = backbone.hidden_states(batch.input_ids, batch.attention_mask)
        for segment, value in zip(batch.segments, encode(batch, hidden_states), strict=True):
            pieces[segment.passage][segment.position] = value
    return [[part[position] for position in sorted(part)] for part in pieces]
