"""Cutting tokenised passages into fixed-length segments and batching them for the backbone."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
from tqdm.auto import tqdm

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .backbone import Backbone

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


def check_text(text: object, what: str) -> str:
    """Validate one user text (passage, question...): a non-empty string of valid Unicode.

    Control characters are kept (the tokenizer reads them like any other character); lone
    surrogates (e.g. from bytes decoded with ``errors="surrogateescape"``) are refused because
    no tokenizer can encode them.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} is a {type(text).__name__}, not a string.")
    if not text.strip():
        raise InvalidInputError(f"{what} is empty or whitespace only; drop it or pass some text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{what} is not valid Unicode text ({error.reason} at character {error.start}); "
            "decode your files with errors='replace'."
        ) from error
    return text


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """Validate passage texts, raising InvalidInputError with the offending index."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, bytes | bytearray):
        raise InvalidInputError("Expected a string or a list of strings, got bytes; decode them first.")
    if not isinstance(texts, Sequence):
        raise InvalidInputError(f"Expected a string or a list of strings, got {type(texts).__name__}.")
    return [check_text(text, f"Passage {index}") for index, text in enumerate(texts)]


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else InvalidInputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
    return value


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
