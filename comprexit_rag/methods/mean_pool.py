"""Mean-pooling baseline: segment means of the layer-averaged states through the same projector.

It keeps ComprExIT's slot layout (ceil(n / r) slots per 128-token window, contiguous
near-equal segments) but replaces both learned transmissions with plain averages, so it
isolates what the depth-wise attention and the transport plan add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone, BackboneFingerprint
from ..checkpoint import PRETRAINED_DIR, CheckpointConfig, CheckpointedModule
from ..errors import InvalidInputError
from ..validation import check_int_field, validate_ratio
from .comprexit.width import join_windows, row_slot_counts, segment_means, split_windows
from .projector import SlotProjector
from .slot_head import HeadOutput, SlotCompressor

CHECKPOINT_KIND = "mean-pool-head"
DEFAULT_MEAN_POOL = PRETRAINED_DIR / "mean-pool-smollm2-135m"


@dataclass
class MeanPoolConfig(CheckpointConfig):
    hidden_size: int
    num_hidden_states: int
    ratio: int = 4
    window: int = 128
    segment_length: int = 512

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_hidden_states", "window", "segment_length"):
            check_int_field(self, name)
        validate_ratio(self.ratio, self.window)
        if self.segment_length % self.window:
            raise InvalidInputError(
                f"segment_length ({self.segment_length}) must be a multiple of window ({self.window})."
            )


class MeanPoolHead(CheckpointedModule):
    """Layer mean -> window segment means -> LayerNorm -> projector."""

    checkpoint_kind = CHECKPOINT_KIND
    config_class = MeanPoolConfig
    description = "mean-pool head"
    default_checkpoint = DEFAULT_MEAN_POOL
    returns_details = False
    config: MeanPoolConfig

    def __init__(self, config: MeanPoolConfig, fingerprint: BackboneFingerprint) -> None:
        super().__init__(config, fingerprint)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.projector = SlotProjector(config.hidden_size)

    @classmethod
    def for_backbone(cls, backbone: Backbone, **overrides) -> MeanPoolHead:
        config = MeanPoolConfig(backbone.hidden_size, backbone.num_hidden_states, **overrides)
        return cls(config, backbone.fingerprint).to(backbone.device)

    def forward(
        self, hidden_states: Sequence[torch.Tensor], anchor_mask: torch.Tensor, ratio: int | None = None
    ) -> HeadOutput:
        ratio = validate_ratio(self.config.ratio if ratio is None else ratio, self.config.window)
        layer_mean = sum(state.float() for state in hidden_states) / len(hidden_states)
        # A host-side mask lays the windows and slots out on the host (no read of the device).
        windows = split_windows(layer_mean, anchor_mask, self.config.window)
        means, slot_mask = segment_means(windows, ratio)
        slots = self.projector(self.norm(means)) * slot_mask.unsqueeze(-1)
        counts = windows.slot_counts(ratio)
        batch = layer_mean.shape[0]
        padded, mask = join_windows(slots, slot_mask, windows.owners, batch, slot_counts=counts)
        return HeadOutput(slots=padded, slot_mask=mask, slot_counts=row_slot_counts(windows.owners, counts, batch))


class MeanPoolCompressor(SlotCompressor):
    kind = "mean-pool"
    head_class = MeanPoolHead
