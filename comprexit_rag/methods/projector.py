"""The MLP that maps compressed vectors into the reader's input-embedding space."""

from __future__ import annotations

import torch
from torch import nn


class SlotProjector(nn.Module):
    """Linear - GELU - Linear, always evaluated in float32 (slots are small; precision matters)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x.float())


def bound_norm(vectors: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Map each vector's norm n to ``max_norm * tanh(n / max_norm)``: unchanged well below the bound,
    never above it, with a gradient everywhere. ``None`` returns the vectors as they are."""
    if max_norm is None:
        return vectors
    norm = vectors.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return vectors * (max_norm * torch.tanh(norm / max_norm) / norm)
