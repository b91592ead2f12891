"""The ComprExIT head: depth-wise then width-wise transmission, then projection into embeddings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from ...backbone import Backbone, BackboneFingerprint
from ...checkpoint import PRETRAINED_DIR, CheckpointedModule, check_fingerprint
from ...errors import InvalidInputError
from ...validation import validate_ratio
from ..projector import SlotProjector, bound_norm
from ..segments import iter_batches, split_into_segments
from ..slot_head import HeadOutput
from .config import ComprExITConfig
from .depth import DepthTransmission
from .width import WidthTransmission, join_windows, row_slot_counts, split_windows

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "comprexit-head"
DEFAULT_HEAD = PRETRAINED_DIR / "comprexit-smollm2-135m"
MULTI_RATIO_HEAD = PRETRAINED_DIR / "comprexit-smollm2-135m-multi-ratio"  # trained at 4, 8 and 16x: for 8x and 16x


class ComprExITHead(CheckpointedModule):
    """A small trainable module over a frozen backbone's hidden states (about 1-2% of its size).

    >>> head = ComprExITHead(ComprExITConfig(hidden_size=576, num_hidden_states=31), backbone.fingerprint)
    >>> out = head(backbone.hidden_states(ids, mask), anchor_mask, ratio=4)
    >>> head.save_pretrained("my-head"); ComprExITHead.from_pretrained("my-head")
    """

    checkpoint_kind = CHECKPOINT_KIND
    config_class = ComprExITConfig
    description = "ComprExIT head"
    default_checkpoint = DEFAULT_HEAD
    returns_details = True  # its output holds the layer weights and transport plans (compress(return_details=True))
    config: ComprExITConfig

    def __init__(self, config: ComprExITConfig, fingerprint: BackboneFingerprint) -> None:
        super().__init__(config, fingerprint)
        self.depth = DepthTransmission(
            config.hidden_size,
            config.num_hidden_states,
            config.key_dim,
            config.depth_temperature,
            standardize=config.standardize_layers,
        )
        self.width = WidthTransmission(
            config.hidden_size,
            config.cost_dim,
            config.source_temperature,
            config.uniform_mix,
            config.sinkhorn_epsilon,
            config.sinkhorn_iterations,
            position_binding=config.position_binding,
        )
        self.projector = SlotProjector(config.hidden_size)

    def bind_positions(self) -> None:
        """Start binding values to their offsets from their slots (:meth:`WidthTransmission.bind_positions`):
        the same slots until the new frequencies train. Saved with the head (``position_binding``)."""
        self.config = replace(self.config, position_binding=True)
        self.width.bind_positions()

    @classmethod
    def for_backbone(cls, backbone: Backbone, **config_overrides) -> ComprExITHead:
        """A freshly initialised head sized for ``backbone``."""
        config = ComprExITConfig(
            hidden_size=backbone.hidden_size, num_hidden_states=backbone.num_hidden_states, **config_overrides
        )
        return cls(config, backbone.fingerprint).to(backbone.device)

    @torch.no_grad()
    def calibrate(self, backbone: Backbone, passages: Sequence[Sequence[int]], batch_size: int = 16) -> None:
        """Measure the layer statistics of ``standardize_layers`` on the tokens the head compresses.

        ``passages`` are token ids (a few hundred windows of generic text are plenty); they are cut
        and prefixed exactly as the compressor does. A head must be calibrated before training:
        the statistics are saved with its weights and never change afterwards.
        """
        if not self.config.standardize_layers:
            raise InvalidInputError("This head has standardize_layers=False: there is nothing to calibrate.")
        check_fingerprint(self.fingerprint, backbone.fingerprint, "This ComprExIT head")
        segments = split_into_segments(passages, self.config.segment_length)
        count, total, squares = 0, 0.0, 0.0
        for batch in iter_batches(segments, batch_size, backbone.bos_token_id):
            states = backbone.hidden_states(batch.input_ids, batch.attention_mask)
            mask = batch.anchor_mask.to(states[0].device)
            count += int(mask.sum())
            # Per layer, in float64: sums over tens of thousands of tokens of values up to ~100.
            tokens = [state[mask].double() for state in states]
            total = total + torch.stack([layer.sum(dim=0) for layer in tokens])
            squares = squares + torch.stack([layer.square().sum(dim=0) for layer in tokens])
        if count < 2:
            raise InvalidInputError("calibrate() needs passages with at least two tokens in all.")
        mean = total / count
        variance = (squares - count * mean.square()) / (count - 1)
        self.depth.set_statistics(mean.float(), variance.clamp(min=0).sqrt().float())
        logger.info("Calibrated the layer standardisation on %d tokens", count)

    def forward(
        self, hidden_states: Sequence[torch.Tensor], anchor_mask: torch.Tensor, ratio: int | None = None
    ) -> HeadOutput:
        """Compress each sequence's tokens where ``anchor_mask`` is True into slots."""
        ratio = validate_ratio(self.config.ratio if ratio is None else ratio, self.config.window)
        anchors, layer_weights = self.depth(hidden_states)
        # The window layout is computed from the mask where it lies: a host-side mask (as the
        # compressor passes) lets the whole head run without waiting for the device.
        windows = split_windows(anchors, anchor_mask, self.config.window)
        window_slots, slot_mask, plans = self.width(windows, ratio, self.config.locality_weight)
        slots = bound_norm(self.projector(window_slots), self.config.max_slot_norm)

        counts = windows.slot_counts(ratio)
        padded, mask = join_windows(slots, slot_mask, windows.owners, anchors.shape[0], slot_counts=counts)
        return HeadOutput(
            slots=padded,
            slot_mask=mask,
            layer_weights=layer_weights,
            transport_plans=plans,
            window_owner=windows.owner,
            window_mask=windows.mask,
            slot_counts=row_slot_counts(windows.owners, counts, anchors.shape[0]) if counts is not None else None,
        )
