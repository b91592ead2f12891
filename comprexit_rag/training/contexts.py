"""The interface between the trainer and whatever turns passages into reader context vectors."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .examples import TrainExample


class ContextEncoder(Protocol):
    """Differentiable passages -> context embeddings; only ``trainable`` gets gradients."""

    name: str
    trainable: nn.Module

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        """One [n_i, H] float tensor per example, in the reader's input-embedding space."""
        ...
