"""ComprExIT: depth-wise attention over layers, width-wise optimal transport into slots, a projector.

``config`` (ComprExITConfig), ``head`` (the trainable head over ``depth``, ``width`` and ``sinkhorn``)
and ``compressor`` (texts -> slots). The reader adapter a head may carry is :mod:`comprexit_rag.reading.adapter`.
"""

from .compressor import ComprExITCompressor
from .config import ComprExITConfig
from .head import DEFAULT_HEAD, MULTI_RATIO_HEAD, ComprExITHead

__all__ = ["DEFAULT_HEAD", "MULTI_RATIO_HEAD", "ComprExITCompressor", "ComprExITConfig", "ComprExITHead"]
