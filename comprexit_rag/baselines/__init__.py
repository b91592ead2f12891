"""Baselines compared against ComprExIT on equal terms (same backbone, reader, data and budget)."""

from .mean_pool import MeanPoolCompressor, MeanPoolConfig, MeanPoolHead
from .soft_prompt import SoftPrompt

__all__ = ["MeanPoolCompressor", "MeanPoolConfig", "MeanPoolHead", "SoftPrompt"]
