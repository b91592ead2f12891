"""Mean-pooling baseline: segment means of the layer-averaged states through the same projector.

It keeps ComprExIT's slot layout (ceil(n / r) slots per 128-token window, contiguous
near-equal segments) but replaces both learned transmissions with plain averages, so it
isolates what the depth-wise attention and the transport plan add.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone, BackboneFingerprint
from ..checkpoint import fingerprint_from_metadata, load_into, load_state_dict, read_metadata, save_module
from ..compressor import SlotCompressor
from ..config import validate_ratio
from ..errors import CheckpointError
from ..head import PRETRAINED_DIR, HeadOutput
from ..projector import SlotProjector
from ..width import join_windows, segment_means, split_windows

CHECKPOINT_KIND = "mean-pool-head"
DEFAULT_MEAN_POOL = PRETRAINED_DIR / "mean-pool-smollm2-135m"


@dataclass
class MeanPoolConfig:
    hidden_size: int
    num_hidden_states: int
    ratio: int = 4
    window: int = 128
    segment_length: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MeanPoolHead(nn.Module):
    """Layer mean -> window segment means -> LayerNorm -> projector."""

    def __init__(self, config: MeanPoolConfig, fingerprint: BackboneFingerprint) -> None:
        super().__init__()
        self.config = config
        self.fingerprint = fingerprint
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
        windows = split_windows(layer_mean, anchor_mask.to(layer_mean.device), self.config.window)
        means, slot_mask = segment_means(windows, ratio)
        slots = self.projector(self.norm(means)) * slot_mask.unsqueeze(-1)
        padded, mask = join_windows(slots, slot_mask, windows.owner, layer_mean.shape[0])
        return HeadOutput(slots=padded, slot_mask=mask)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, **extra) -> Path:
        return save_module(
            directory,
            self,
            kind=CHECKPOINT_KIND,
            config=self.config.to_dict(),
            fingerprint=self.fingerprint,
            extra=extra,
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike | None = None) -> MeanPoolHead:
        directory = Path(directory) if directory is not None else DEFAULT_MEAN_POOL
        metadata = read_metadata(directory, CHECKPOINT_KIND)
        try:
            config = MeanPoolConfig(**metadata["config"])
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{directory}/config.json has an invalid mean-pool config: {error}") from error
        head = cls(config, fingerprint_from_metadata(metadata))
        load_into(head, load_state_dict(directory), directory)
        return head


class MeanPoolCompressor(SlotCompressor):
    kind = "mean-pool"
    head_class = MeanPoolHead
