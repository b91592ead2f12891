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
