"""Growing a trained reader adapter: a higher rank that starts out computing exactly what it computed.

A later training stage can give the reader more capacity without starting its reading over (session 21's
question: is the gap to the full-text reader the adapter's size?). The widened adapter keeps the trained
LoRA components, with B rescaled by the ratio of the two ``alpha / rank`` scalings, and adds fresh ones whose
B is zero, so its delta, and every reading pass, is unchanged until it trains.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .adapter import ReaderAdapter, ReaderAdapterConfig

__all__ = ["widen"]


def widen(adapter: ReaderAdapter, config: ReaderAdapterConfig) -> ReaderAdapter:
    """An adapter of ``config`` (a higher rank; the same layers and scope) on ``adapter``'s backbone that reads
    exactly as ``adapter`` does; ``adapter`` is detached from the backbone.

    The new adapter takes a fresh name: a loaded adapter's name stands for its file's weights, which another
    load of that file would reuse.
    """
    narrow = adapter.config
    if config.rank <= narrow.rank:
        raise InvalidInputError(
            f"A reader adapter of rank {narrow.rank} can only be widened to a higher rank, not {config.rank}."
        )
    if config.target_modules != narrow.target_modules or config.scope != narrow.scope:
        raise InvalidInputError(
            "A widened reader adapter keeps its target modules and scope; only its rank and alpha change."
        )
    with torch.no_grad():
        trained = [
            (
                layer.lora_A[adapter.name].weight.float(),
                layer.lora_B[adapter.name].weight.float(),
                layer.scaling[adapter.name],
            )
            for layer in adapter.lora_layers
        ]
    adapter.detach()
    wide = ReaderAdapter.create(adapter.backbone, config)
    with torch.no_grad():
        for (a, b, scaling), layer in zip(trained, wide.lora_layers, strict=True):
            layer.lora_A[wide.name].weight[: narrow.rank] = a
            layer.lora_B[wide.name].weight[:, : narrow.rank] = b * (scaling / layer.scaling[wide.name])
    wide.paired_head = adapter.paired_head
    return wide
