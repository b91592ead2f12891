"""Differentiable context encoders for the trainer, one per trainable method (see the method registry).

``Encoder.build(spec, config, backbone)`` loads the method's module from ``config.init_from`` or makes
a fresh one for the backbone; ``encode(batch, ratio)`` turns a batch of examples into reader contexts
with gradients flowing into that module only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Self

import torch
from torch import nn

from ..backbone import Backbone, autocast_for
from ..checkpoint import check_fingerprint
from ..layout import to_device
from ..methods.comi import COMIMerger, encode_pairs, question_token_ids
from ..methods.segments import SegmentBatch, encode_segments, split_into_segments
from ..methods.slot_head import packed_slots
from ..methods.soft_prompt import SoftPrompt
from ..validation import validate_ratio
from .config import TrainConfig, head_options
from .data import calibration_passages
from .examples import TrainExample

if TYPE_CHECKING:
    from ..methods import MethodSpec


def load_or_create(spec: MethodSpec, config: TrainConfig, create: Callable[[type], nn.Module]) -> nn.Module:
    """The method's module loaded from ``config.init_from``, else ``create(module_class)``."""
    module_class = spec.module_class()
    return module_class.from_pretrained(config.init_from) if config.init_from else create(module_class)


# Tokens per backbone pass of the training encoder: 256 x 128 or 64 x 512 in one pass (it was 64 segments,
# four passes at 256 x 128). Each pass costs the host the same few thousand operations whatever its size.
# The head keeps what it needs of every pass for the backward pass anyway: a larger pass adds only its own
# hidden states to the peak memory (2.3 GB for 65,536 tokens of SmolLM2 in bfloat16).
TRAIN_SEGMENT_TOKENS = 1 << 16


class SlotHeadEncoder:
    """Passages -> frozen backbone -> a slot head (ComprExIT or mean-pool), with gradients in the head."""

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        name: str,
        segment_batch_size: int = 1024,
        segment_tokens: int | None = TRAIN_SEGMENT_TOKENS,
    ) -> None:
        self.backbone = backbone
        self.trainable = head
        self.name = name
        self.segment_batch_size = segment_batch_size  # segments per backbone pass, at most
        self.segment_tokens = segment_tokens  # padded tokens per backbone pass, at most

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        return cls(backbone, load_or_create(spec, config, lambda head: head.for_backbone(backbone)), spec.name)

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        """One [n_i, H] float32 tensor per example: views into one tensor of all the batch's slots.

        Each backbone batch's slots are gathered at once (:func:`packed_slots`) and put in example
        order with one more gather, so the forward and backward passes cost no operation per example.
        """
        chunks: list[torch.Tensor] = []  # each backbone batch's slots, rows concatenated
        packed = 0  # slots gathered so far

        def run(segments: SegmentBatch, hidden_states: tuple[torch.Tensor, ...]) -> list[range]:
            nonlocal packed
            with autocast_for(self.backbone):
                output = self.trainable(hidden_states, segments.anchor_mask, ratio=ratio)
            vectors, counts = packed_slots(output)
            chunks.append(vectors)
            spans = []
            for count in counts:  # where each segment's slots lie among all gathered so far
                spans.append(range(packed, packed + count))
                packed += count
            return spans

        passages = [ids for example in batch for ids in example.passage_ids]
        per_passage = encode_segments(
            self.backbone,
            passages,
            run,
            segment_length=self.trainable.config.segment_length,
            batch_size=self.segment_batch_size,
            max_tokens=self.segment_tokens,
            show_progress=False,
        )
        if not chunks:  # no passages at all
            hidden = self.backbone.hidden_size
            return [torch.zeros(0, hidden, device=self.backbone.device) for _ in batch]
        vectors = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        # Example order: each example's passages, each passage's segments in order.
        order = [index for spans in per_passage for span in spans for index in span]
        if order != list(range(len(order))):
            vectors = vectors.index_select(0, to_device(torch.tensor(order, dtype=torch.long), vectors.device))
        passage_sizes = [sum(len(span) for span in spans) for spans in per_passage]
        return list(vectors.split(example_sizes(batch, passage_sizes)))


class ComprExITEncoder(SlotHeadEncoder):
    """The ComprExIT head's encoder: a fresh head takes the run's first ratio (and, if asked, a layer
    standardisation calibrated on Wikipedia); the run's head options apply to a loaded head too."""

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        def create(head_class: type) -> nn.Module:
            head = head_class.for_backbone(
                backbone, ratio=config.ratios[0], standardize_layers=config.standardize_layers
            )
            if config.standardize_layers:
                head.calibrate(backbone, calibration_passages(backbone, config.data_root))
            return head

        head = load_or_create(spec, config, create)
        if config.position_binding:
            head.bind_positions()
        for name in head_options("override"):  # replace() validates them through the head's config
            if getattr(config, name) is not None:
                head.config = replace(head.config, **{name: getattr(config, name)})
        head.config.trained_ratios = sorted(config.ratios)
        return cls(backbone, head, spec.name)


class COMIContextEncoder:
    """COMI's encoder: only the projector trains.

    Each example's passages are compressed with its question and their slots concatenated in
    order. Examples with an empty question (next-token pretraining) use the mean of the context
    states as the query vector.
    """

    name = "comi"

    def __init__(self, backbone: Backbone, merger: COMIMerger, batch_size: int | None = None) -> None:
        check_fingerprint(merger.fingerprint, backbone.fingerprint, "This COMI merger")
        self.backbone = backbone
        self.trainable = merger
        # (passage segment, question) pairs per backbone pass: as many tokens a pass as the slot heads read
        # (TRAIN_SEGMENT_TOKENS). Passes of 16 pairs left the H200 waiting on the host (23 sequences/s
        # against 33 for ComprExIT, session 15).
        self.batch_size = batch_size or max(1, TRAIN_SEGMENT_TOKENS // merger.config.segment_length)

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        return cls(backbone, load_or_create(spec, config, lambda merger: merger.for_backbone(backbone)))

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        """One [n_i, H] float32 tensor per example, with gradients flowing into the projector."""
        merger = self.trainable
        ratio = validate_ratio(ratio, merger.config.max_ratio)
        question_ids = question_token_ids(self.backbone, [example.question for example in batch])
        contexts, questions, owners = [], [], []
        for index, example in enumerate(batch):
            for segment in split_into_segments(example.passage_ids, merger.config.segment_length):
                contexts.append(segment.token_ids)
                questions.append(question_ids[index])
                owners.append(index)
        slots = encode_pairs(self.backbone, merger, contexts, questions, ratio, self.batch_size)
        per_example: list[list[torch.Tensor]] = [[] for _ in batch]
        for owner, segment_slots in zip(owners, slots, strict=True):
            per_example[owner].append(segment_slots)
        hidden = merger.config.hidden_size
        device = self.backbone.device
        return [
            torch.cat(parts) if parts else torch.zeros(0, hidden, device=device, dtype=torch.float32)
            for parts in per_example
        ]


class FullTextEncoder:
    """The raw (uncompressed) passages, joined by a blank line, as the reader's input embeddings.

    The full-lora baseline's encoder: its module has no weights, so the reader adapter trained with it
    is all that learns.
    """

    name = "full-lora"

    def __init__(self, backbone: Backbone, module: nn.Module) -> None:
        self.backbone = backbone
        self.trainable = module
        self.separator: list[int] = backbone.tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        return cls(backbone, load_or_create(spec, config, lambda module: module.for_backbone(backbone)))

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        return [self.passage_embeddings(example) for example in batch]

    def passage_embeddings(self, example: TrainExample) -> torch.Tensor:
        """One example's passages as text embeddings [n, H] (no gradient: the embeddings are frozen)."""
        ids: list[int] = []
        for index, passage in enumerate(example.passage_ids):
            ids += (self.separator if index else []) + list(passage)
        return self.backbone.embed(torch.tensor(ids, dtype=torch.long))


class SoftPromptEncoder(FullTextEncoder):
    """Learned soft tokens followed by the raw (uncompressed) passages: the full-tuned baseline."""

    name = "full-tuned"
    trainable: SoftPrompt

    @classmethod
    def build(cls, spec: MethodSpec, config: TrainConfig, backbone: Backbone) -> Self:
        def create(prompt_class: type) -> nn.Module:
            return prompt_class.for_backbone(backbone, config.soft_prompt_tokens)

        return cls(backbone, load_or_create(spec, config, create))

    def encode(self, batch: list[TrainExample], ratio: int) -> list[torch.Tensor]:
        contexts = []
        for example in batch:
            text = self.passage_embeddings(example)
            contexts.append(torch.cat([self.trainable.embeddings.to(text.dtype), text]))
        return contexts


def example_sizes(batch: list[TrainExample], passage_sizes: list[int]) -> list[int]:
    """Vectors of each example: the sum over its passages (``passage_sizes`` in order, all examples')."""
    sizes, start = [], 0
    for example in batch:
        count = len(example.passage_ids)
        sizes.append(sum(passage_sizes[start : start + count]))
        start += count
    return sizes
