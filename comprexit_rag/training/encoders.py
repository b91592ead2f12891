"""Differentiable context encoders for the trainer: slot heads and the soft prompt."""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import Backbone
from ..baselines.soft_prompt import SoftPrompt
from ..compressor import autocast_for, row_slots
from ..segments import SegmentBatch, encode_segments
from .examples import TrainExample


class SlotHeadEncoder:
    """Passages -> frozen backbone -> a slot head (ComprExIT or mean-pool), with gradients in the head."""

    def __init__(self, backbone: Backbone, head: nn.Module, name: str, segment_batch_size: int = 64) -> None:
        self.backbone = backbone
        self.trainable = head
        self.name = name
        self.segment_batch_size = segment_batch_size

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        def run(segments: SegmentBatch, hidden_states: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            with autocast_for(self.backbone):
                output = self.trainable(hidden_states, segments.anchor_mask, ratio=ratio)
            return row_slots(output)

        passages = [ids for example in batch for ids in example.passage_ids]
        per_passage = encode_segments(
            self.backbone,
            passages,
            run,
            segment_length=self.trainable.config.segment_length,
            batch_size=self.segment_batch_size,
            show_progress=False,
        )
        return regroup(batch, [torch.cat(parts) for parts in per_passage])


class SoftPromptEncoder:
    """Learned soft tokens followed by the raw (uncompressed) passages: the full-tuned baseline."""

    name = "full-tuned"

    def __init__(self, backbone: Backbone, prompt: SoftPrompt) -> None:
        self.backbone = backbone
        self.trainable = prompt
        self.separator = backbone.tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        contexts = []
        for example in batch:
            ids: list[int] = []
            for index, passage in enumerate(example.passage_ids):
                ids += (self.separator if index else []) + list(passage)
            text = self.backbone.embed(torch.tensor(ids, dtype=torch.long))
            contexts.append(torch.cat([self.trainable.embeddings.to(text.dtype), text]))
        return contexts


def regroup(batch: list[TrainExample], passage_vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate consecutive passages' vectors back into one context per example."""
    contexts, start = [], 0
    for example in batch:
        count = len(example.passage_ids)
        contexts.append(torch.cat(passage_vectors[start : start + count]))
        start += count
    return contexts
