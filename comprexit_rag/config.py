"""Configuration of the ComprExIT head (defaults: the reference values in METHOD.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checkpoint import CheckpointConfig
from .errors import InvalidInputError


@dataclass
class ComprExITConfig(CheckpointConfig):
    """Hyper-parameters of a :class:`~comprexit_rag.head.ComprExITHead`.

    ``hidden_size`` and ``num_hidden_states`` (L + 1) come from the backbone; the rest
    are the reference defaults. ``ratio`` is the default compression ratio; a head can
    compress at any ratio, and ``trained_ratios`` records which ones it was trained for.

    Three departures from the reference, all off by default (BENCHMARKS.md measures them):
    ``standardize_layers`` standardises each layer's states per dimension with statistics
    calibrated on text (:meth:`ComprExITHead.calibrate`) before the depth-wise attention, and
    ``locality_weight`` adds ``weight * min(distance, 4)`` to the transport cost, the distance
    between a token and a slot measured in segments of the window. ``max_slot_norm`` bounds each
    slot's L2 norm smoothly (``c * tanh(norm / c)``), so a head cannot steer the reader with
    slots tens of times larger than a token embedding.
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

    def __post_init__(self) -> None:
        validate_ratio(self.ratio, self.window)
        if self.segment_length % self.window:
            raise InvalidInputError(
                f"segment_length ({self.segment_length}) must be a multiple of window ({self.window})."
            )
        if not self.locality_weight >= 0:
            raise InvalidInputError(f"locality_weight must be >= 0, got {self.locality_weight}.")
        if self.max_slot_norm is not None and not self.max_slot_norm > 0:
            raise InvalidInputError(f"max_slot_norm must be > 0 (or None for no bound), got {self.max_slot_norm}.")

    def slots_for(self, num_tokens: int, ratio: int | None = None) -> int:
        """Number of slots produced for a passage of ``num_tokens`` tokens."""
        ratio = validate_ratio(self.ratio if ratio is None else ratio, self.window)
        full, rest = divmod(num_tokens, self.window)
        return full * -(-self.window // ratio) + -(-rest // ratio)


def validate_ratio(ratio: object, window: int) -> int:
    """Check a compression ratio: a positive integer no larger than the window."""
    if isinstance(ratio, bool) or not isinstance(ratio, int):
        raise InvalidInputError(f"ratio must be a positive integer, got {ratio!r}.")
    if not 1 <= ratio <= window:
        raise InvalidInputError(f"ratio must be between 1 and the window size {window}, got {ratio}.")
    return ratio
