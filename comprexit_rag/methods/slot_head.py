"""Query-independent compression with a slot head (ComprExIT, mean-pool): texts -> frozen backbone -> slots.

A slot head maps the backbone's hidden states of a passage to slots, never seeing the question, so
slots are computed once per passage and stored. :class:`SlotCompressor` holds what every slot head
shares besides what every :class:`~comprexit_rag.methods.base.ModuleCompressor` does (loading with the
checkpoint's reader adapter, the fingerprint stores key on): segmenting long passages and batching.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbone import Backbone, autocast_for
from ..errors import InvalidInputError
from ..layout import concatenated_ranges, to_device
from ..soft_context import PassageDetails, SoftContext
from .base import ModuleCompressor
from .segments import SegmentBatch, encode_segments

logger = logging.getLogger(__name__)


@dataclass
class HeadOutput:
    """Slots of a batch of sequences, plus what the head decided, for inspection."""

    slots: torch.Tensor  # [B, S, H] float32, in the reader's input-embedding space
    slot_mask: torch.Tensor  # [B, S] bool
    # Inspection fields; heads without layer attention or transport (baselines) leave them None.
    layer_weights: torch.Tensor | None = None  # [B, T, L+1] depth-wise attention over layers
    transport_plans: torch.Tensor | None = None  # [num_windows, W, K]
    window_owner: torch.Tensor | None = None  # [num_windows] sequence index of each window
    window_mask: torch.Tensor | None = None  # [num_windows, W] real tokens of each window
    # Slots of each row as host ints, when the head laid them out on the host (else read from slot_mask).
    slot_counts: list[int] | None = None


class SlotCompressor(ModuleCompressor):
    """Query-independent compression: a frozen backbone plus a head mapping hidden states to slots.

    The head is any module with ``config`` (ratio, window, segment_length), ``fingerprint`` and
    ``forward(hidden_states, anchor_mask, ratio) -> HeadOutput``. Because the question is never
    seen (``compress`` ignores ``query``), slots can be computed once at indexing time and stored.
    ``compress(..., return_details=True)`` also returns what a ComprExIT head decided per passage.
    """

    kind = "slots"

    head_class: type[nn.Module]  # set by subclasses; loads with ``head_class.from_pretrained(path)``
    # (``head_class.returns_details``: its output carries layer weights and transport plans)

    @classmethod
    def from_pretrained(
        cls,
        head: str | os.PathLike | nn.Module | None = None,
        backbone: str | os.PathLike | Backbone | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> SlotCompressor:
        """Defaults: the embedded SmolLM2 backbone and the head shipped for it, with the head's reader adapter
        when its directory has one (see :meth:`~comprexit_rag.methods.base.ModuleCompressor.load`)."""
        return cls.load(cls.head_class, head, backbone, device=device, batch_size=batch_size)

    @property
    def head(self) -> nn.Module:
        return self.module

    @property
    def max_ratio(self) -> int:
        """The largest ratio: one slot per transport window."""
        return self.config.window

    @torch.no_grad()
    def compress_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        query: object = None,
        *,
        ratio: int | None = None,
        batch_size: int | None = None,
        return_details: bool = False,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Like :meth:`compress`, for passages that are already tokenised (no special tokens)."""
        ratio = self.checked_ratio(ratio)
        if return_details and not self.head_class.returns_details:
            raise InvalidInputError("return_details=True needs a ComprExIT head (layer weights and transport plans).")

        def encode(batch: SegmentBatch, hidden_states: tuple[torch.Tensor, ...]) -> list[SegmentSlots]:
            with autocast_for(self.backbone):
                output = self.head(hidden_states, batch.anchor_mask, ratio=ratio)
            return [
                SegmentSlots(
                    slots=slots,
                    details=_segment_details(output, row, batch.anchor_mask[row], ids) if return_details else None,
                )
                for row, (ids, slots) in enumerate(
                    zip((s.token_ids for s in batch.segments), row_slots(output), strict=True)
                )
            ]

        per_passage = encode_segments(
            self.backbone,
            token_ids,
            encode,
            segment_length=self.config.segment_length,
            batch_size=batch_size or self.batch_size,
            show_progress=show_progress,
        )
        passages = [torch.cat([part.slots for part in parts]) for parts in per_passage]
        details = None
        if return_details:
            details = [_merge_details([part.details for part in parts]) for parts in per_passage]
        return self.soft_context(passages, [len(ids) for ids in token_ids], details=details)


def slot_counts(output: HeadOutput) -> list[int]:
    """Slots of each row: the head's host-side counts, else one read of ``slot_mask`` for the whole batch."""
    return output.slot_counts if output.slot_counts is not None else output.slot_mask.sum(dim=1).tolist()


def row_slots(output: HeadOutput) -> list[torch.Tensor]:
    """Each row's slots in float32. They are a prefix of the padded row, so the counts serve the whole
    batch (boolean indexing would wait for the device once per row)."""
    return [output.slots[row, :count].float() for row, count in enumerate(slot_counts(output))]


def packed_slots(output: HeadOutput) -> tuple[torch.Tensor, list[int]]:
    """All rows' slots in float32, rows concatenated [sum S_i, H], and each row's count.

    One gather with a host-built index, so its backward is one scatter too (per-row slices would each
    add a zero-filled copy of the whole padded batch to the gradient).
    """
    counts = slot_counts(output)
    slots = output.slots
    rows = concatenated_ranges(np.arange(len(counts)) * slots.shape[1], counts)
    index = to_device(torch.from_numpy(rows), slots.device)
    return slots.reshape(-1, slots.shape[-1]).index_select(0, index).float(), counts


@dataclass
class SegmentSlots:
    slots: torch.Tensor
    details: PassageDetails | None


def _segment_details(output, row: int, anchor_mask: torch.Tensor, token_ids: Sequence[int]) -> PassageDetails:
    windows = (output.window_owner == row).nonzero().flatten().tolist()
    plans = []
    for window in windows:
        tokens = int(output.window_mask[window].sum())
        plan = output.transport_plans[window, :tokens]
        plans.append(plan[:, plan.sum(dim=0) > 0].cpu())
    layer_weights = output.layer_weights[row, anchor_mask.to(output.layer_weights.device)].cpu()
    return PassageDetails(list(token_ids), layer_weights, plans)


def _merge_details(parts: list[PassageDetails]) -> PassageDetails:
    return PassageDetails(
        token_ids=[t for part in parts for t in part.token_ids],
        layer_weights=torch.cat([part.layer_weights for part in parts]),
        transport_plans=[plan for part in parts for plan in part.transport_plans],
    )
