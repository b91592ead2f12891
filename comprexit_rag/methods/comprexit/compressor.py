"""ComprExITCompressor: texts -> SoftContext, with a frozen backbone and a trained ComprExIT head."""

from __future__ import annotations

from ..slot_head import SlotCompressor
from .head import MULTI_RATIO_HEAD, ComprExITHead


class ComprExITCompressor(SlotCompressor):
    """Compress passages into soft slots with a ComprExIT head.

    >>> compressor = ComprExITCompressor.from_pretrained()
    >>> soft = compressor.compress(["Paris is the capital of France."], ratio=4)
    >>> soft.slot_counts, soft.ratio
    """

    kind = "comprexit"
    head_class = ComprExITHead
    other_ratios_advice = (
        f" The head trained at 4, 8 and 16x ships as {MULTI_RATIO_HEAD.name!r}: "
        f"ComprExITCompressor.from_pretrained({MULTI_RATIO_HEAD.name!r}) (CLI: --head {MULTI_RATIO_HEAD.name})."
    )

    @property
    def trained_ratios(self) -> list[int]:
        return self.config.trained_ratios
