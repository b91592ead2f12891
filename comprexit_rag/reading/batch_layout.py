"""The layout of a padded reader batch (``prompt + context + question + target`` per row), built on the
host with numpy and sent to the device in one copy; :meth:`Reader.build_inputs` fills it in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..layout import concatenated_ranges, to_device

IGNORE_INDEX = -100


@dataclass
class PlacedBatch:
    """A batch's layout on the device (see :class:`BatchLayout`)."""

    token_ids: torch.Tensor  # [B, T] text token ids, 0 elsewhere
    attention_mask: torch.Tensor  # [B, T] long
    position_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T] IGNORE_INDEX outside the targets
    slot_mask: torch.Tensor  # [B, T] bool, the context vectors' positions
    text_mask: torch.Tensor  # [B, T] bool, the text tokens' positions
    vector_index: torch.Tensor  # [V] flat positions of the context vectors, in order
    target_positions: torch.Tensor  # [N] flat positions that predict a target token
    target_ids: torch.Tensor  # [N]
    after_positions: torch.Tensor  # [M] flat positions after the context (the prompt's rest and the target)


class BatchLayout:
    """Where each piece of each row goes in a padded reader batch, computed on the host with numpy.

    A row is ``before + context + after + target``; the context is text (token ids) or a number of
    vectors (slots, soft tokens) written in later. :meth:`place` sends the whole layout to the device
    in one copy.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []  # every row's token ids, rows concatenated (0 at vector positions)
        self.lengths: list[int] = []
        self.befores: list[list[int]] = []
        self.vector_counts: list[int] = []  # context vectors per row (0 for text)
        self.target_counts: list[int] = []
        self.target_tokens: list[int] = []
        self.context_lengths: list[int] = []  # context vectors or text tokens per row

    def add(self, before: list[int], context: Sequence[int] | int, after: list[int], target: Sequence[int]) -> None:
        """One row; ``context`` is text token ids, or the number of context vectors."""
        vectors = context if isinstance(context, int) else 0
        context_ids = [0] * vectors if isinstance(context, int) else list(context)
        for piece in (before, context_ids, after, target):
            self.tokens.extend(piece)
        self.lengths.append(len(before) + len(context_ids) + len(after) + len(target))
        self.befores.append(before)
        self.vector_counts.append(vectors)
        self.target_counts.append(len(target))
        self.target_tokens.extend(target)
        self.context_lengths.append(len(context_ids))

    def prompt_prefix(self) -> list[int] | None:
        """The prompt before the context when every row has the same one."""
        prefixes = {tuple(before) for before in self.befores}
        return list(prefixes.pop()) if len(prefixes) == 1 else None

    def place(self, padding_side: str, device: torch.device) -> PlacedBatch:
        """The padded batch's token ids, masks, labels and positions, on ``device``."""
        lengths = np.asarray(self.lengths, dtype=np.int64)
        rows, width = len(lengths), int(lengths.max(initial=0))
        offsets = width - lengths if padding_side == "left" else np.zeros_like(lengths)
        row_starts = np.arange(rows, dtype=np.int64) * width + offsets  # flat position of each row's first token

        planes = np.zeros((6, rows, width), dtype=np.int64)
        token_ids, mask, positions, labels, slot_mask, text_mask = planes  # views
        real = concatenated_ranges(row_starts, lengths)
        token_ids.flat[real] = self.tokens
        mask.flat[real] = 1
        positions[:] = np.maximum(mask.cumsum(axis=1) - 1, 0)
        befores = np.asarray([len(before) for before in self.befores], dtype=np.int64)
        vector_index = concatenated_ranges(row_starts + befores, np.asarray(self.vector_counts, dtype=np.int64))
        slot_mask.flat[vector_index] = 1
        text_mask[:] = mask & (1 - slot_mask)
        target_counts = np.asarray(self.target_counts, dtype=np.int64)
        targets = concatenated_ranges(row_starts + lengths - target_counts, target_counts)
        labels.fill(IGNORE_INDEX)
        labels.flat[targets] = self.target_tokens
        # The logits at position p predict the token at p + 1 (a target in a row's first column has none).
        predicted = targets % max(width, 1) > 0
        target_positions = targets[predicted] - 1
        target_ids = np.asarray(self.target_tokens, dtype=np.int64)[predicted]
        contexts = np.asarray(self.context_lengths, dtype=np.int64)
        after_positions = concatenated_ranges(row_starts + befores + contexts, lengths - befores - contexts)

        indices = [vector_index, target_positions, target_ids, after_positions]
        sent = to_device(torch.from_numpy(np.concatenate([planes.ravel(), *indices])), device)  # one copy
        sent_planes = sent[: planes.size].view(planes.shape)
        sent_indices = sent[planes.size :].split([len(index) for index in indices])
        return PlacedBatch(
            token_ids=sent_planes[0],
            attention_mask=sent_planes[1],
            position_ids=sent_planes[2],
            labels=sent_planes[3],
            slot_mask=sent_planes[4].bool(),
            text_mask=sent_planes[5].bool(),
            vector_index=sent_indices[0],
            target_positions=sent_indices[1],
            target_ids=sent_indices[2],
            after_positions=sent_indices[3],
        )
