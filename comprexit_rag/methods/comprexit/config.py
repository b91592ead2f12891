"""Configuration of the ComprExIT head (defaults: the reference values of the paper, arXiv 2602.03784)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...checkpoint import CheckpointConfig
from ...errors import InvalidInputError
from ...validation import check_int_field, check_ratios_field, check_real_field, validate_ratio


@dataclass
class ComprExITConfig(CheckpointConfig):
    """Hyper-parameters of a :class:`~comprexit_rag.methods.comprexit.head.ComprExITHead`.

    ``hidden_size`` and ``num_hidden_states`` (L + 1) come from the backbone; the rest
    are the reference defaults. ``ratio`` is the default compression ratio; a head can
    compress at any ratio, and ``trained_ratios`` records which ones it was trained for.

    Four departures from the reference, all off by default (BENCHMARKS.md measures them):
    ``standardize_layers`` standardises each layer's states per dimension with statistics
    calibrated on text (:meth:`ComprExITHead.calibrate`) before the depth-wise attention, and
    ``locality_weight`` adds ``weight * min(distance, 4)`` to the transport cost, the distance
    between a token and a slot measured in segments of the window. ``max_slot_norm`` bounds each
    slot's L2 norm smoothly (``c * tanh(norm / c)``), so a head cannot steer the reader with
    slots tens of times larger than a token embedding. ``position_binding`` rotates each value by its
    token's offset from its slot (learned frequencies, zero at first), so that a slot can say in which
    order its tokens came.
    """

    hidden_size: int
    num_hidden_states: int
    ratio: int = 4
    window: int = 128
    segment_length: int = 512
    key_dim: int = 256
    depth_temperature: float = 0.7
    cost_dim: int = 256
    source_temperature: float = 1.0
    uniform_mix: float = 0.05
    sinkhorn_epsilon: float = 0.1
    sinkhorn_iterations: int = 30
    trained_ratios: list[int] = field(default_factory=lambda: [4])
    standardize_layers: bool = False
    locality_weight: float = 0.0
    max_slot_norm: float | None = None
    position_binding: bool = False

    def __post_init__(self) -> None:
        # A checkpoint's config.json is user-editable: every field is checked here, so a bad value
        # is a typed error at load time, never silently different slots or a crash mid-compression.
        for name in ("hidden_size", "num_hidden_states", "window", "segment_length", "key_dim", "cost_dim"):
            check_int_field(self, name)
        check_int_field(self, "sinkhorn_iterations")
        validate_ratio(self.ratio, self.window)
        check_ratios_field(self, "trained_ratios", self.window)
        if self.segment_length % self.window:
            raise InvalidInputError(
                f"segment_length ({self.segment_length}) must be a multiple of window ({self.window})."
            )
        check_real_field(self, "depth_temperature", low=0.0)
        check_real_field(self, "source_temperature", low=0.0)
        check_real_field(self, "sinkhorn_epsilon", low=0.0)
        check_real_field(self, "uniform_mix", low=0.0, high=1.0, closed=True)
        check_real_field(self, "locality_weight", low=0.0, closed=True)
        if not isinstance(self.standardize_layers, bool):
            raise InvalidInputError(f"standardize_layers must be true or false, got {self.standardize_layers!r}.")
        if not isinstance(self.position_binding, bool):
            raise InvalidInputError(f"position_binding must be true or false, got {self.position_binding!r}.")
        if self.position_binding and self.hidden_size % 2:
            raise InvalidInputError(
                f"position_binding rotates pairs of dimensions: hidden_size must be even, got {self.hidden_size}."
            )
        if self.max_slot_norm is not None:
            check_real_field(self, "max_slot_norm", low=0.0, hint=" (or None for no bound)")

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        # Written only when on: a head saved before the option existed keeps its config.json, its digest, and
        # so its reader adapter's pairing and the slots stored with it.
        if not values["position_binding"]:
            del values["position_binding"]
        return values

    def slots_for(self, num_tokens: int, ratio: int | None = None) -> int:
        """Number of slots produced for a passage of ``num_tokens`` tokens."""
        ratio = validate_ratio(self.ratio if ratio is None else ratio, self.window)
        full, rest = divmod(num_tokens, self.window)
        return full * -(-self.window // ratio) + -(-rest // ratio)
