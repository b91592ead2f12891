"""ComprExITCompressor: texts -> SoftContext, with a frozen backbone and a trained ComprExIT head."""

from __future__ import annotations

from ..slot_head import SlotCompressor
from .head import ComprExITHead


class ComprExITCompressor(SlotCompressor):
    """Compress passages into soft slots with a ComprExIT head.

    >>> compressor = ComprExITCompressor.from_pretrained()
    >>> soft = compressor.compress(["Paris is the capital of France."], ratio=4)
    >>> soft.slot_counts, soft.ratio
    """

    kind = "comprexit"
    head_class = ComprExITHead
