"""The interface between the trainer and whatever turns passages into reader context vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Self

import torch
from torch import nn

from .examples import TrainExample

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..methods import MethodSpec
    from .config import TrainConfig


class ContextEncoder(Protocol):
    """Differentiable passages -> context embeddings; only ``trainable`` gets gradients.

    Each trainable method's spec names its encoder class (``MethodSpec.encoder``).
    """

    name: str
    trainable: nn.Module

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        """The encoder with the method's module loaded from ``config.init_from`` or freshly made."""
        ...

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        """One [n_i, H] float tensor per example, in the reader's input-embedding space."""
        ...
