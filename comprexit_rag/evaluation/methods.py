"""The methods the harness compares: each turns QA examples into reader contexts.

All of them use the same backbone as reader, the same prompt and greedy decoding, so differences
come from the context (and, for a method trained with one, its reader adapter) alone. Each
registered method names its class here (``MethodSpec.evaluator``), built with
``build(spec, backbone, ratio, checkpoint)``; ``reader_adapter`` is the adapter its checkpoint
brought, the one to build the reader with (``Reader(backbone, adapter=method.reader_adapter)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Self

import torch

from ..backbone import Backbone
from ..checkpoint import check_fingerprint
from ..data import QAExample
from ..methods import MethodSpec, get_method
from ..reading.adapter import ReaderAdapter
from ..reading.reader import Context
from ..soft_context import SoftContext
from ..validation import check_positive_int

Checkpoint = str | os.PathLike | None


@dataclass
class PreparedContexts:
    contexts: list[Context]
    context_vectors: list[int]  # what the reader reads per example: slots, or text tokens


class EvalMethod(Protocol):
    """``reader_adapter``: the adapter the method was trained to be read through, from its checkpoint (None:
    it brings none; slots still carry the adapter they need, see ``SoftContext.reader_adapter``)."""

    name: str
    reader_adapter: ReaderAdapter | None

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self: ...

    def prepare(self, examples: list[QAExample]) -> PreparedContexts: ...


def passage_texts(example: QAExample) -> list[str]:
    return [passage.formatted() for passage in example.passages]


class ClosedBook:
    name = "closed-book"
    reader_adapter: ReaderAdapter | None = None

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        return cls()

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        return PreparedContexts([None] * len(examples), [0] * len(examples))


class FullText:
    """The raw passages, joined with blank lines."""

    name = "full"
    reader_adapter: ReaderAdapter | None = None

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        return cls(backbone)

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts = [passage_texts(example) for example in examples]
        lengths = [len(self.backbone.tokenize(["\n\n".join(texts)])[0]) for texts in contexts]
        return PreparedContexts(contexts, lengths)


class Truncate:
    """The first 1/ratio of the context tokens, as text embeddings."""

    name = "truncate"
    reader_adapter: ReaderAdapter | None = None

    def __init__(self, backbone: Backbone, ratio: int) -> None:
        self.backbone = backbone
        self.ratio = check_positive_int(ratio, "ratio")

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        return cls(backbone, ratio)

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts, lengths = [], []
        for example in examples:
            ids = self.backbone.tokenize(["\n\n".join(passage_texts(example))])[0]
            kept = ids[: max(1, len(ids) // self.ratio)]
            contexts.append(self.backbone.embed(torch.tensor(kept)))
            lengths.append(len(kept))
        return PreparedContexts(contexts, lengths)


class FullTuned:
    """Learned soft prompt before the raw passages (prompt tuning on the uncompressed context)."""

    name = "full-tuned"
    reader_adapter: ReaderAdapter | None = None

    def __init__(self, backbone: Backbone, prompt) -> None:
        check_fingerprint(prompt.fingerprint, backbone.fingerprint, "This soft prompt")
        self.backbone = backbone
        self.prompt = prompt.to(backbone.device)

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        return cls(backbone, spec.module_class().from_pretrained(checkpoint))

    @torch.no_grad()
    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts = [self.prompt.context(self.backbone, "\n\n".join(passage_texts(e))) for e in examples]
        return PreparedContexts(contexts, [c.shape[0] for c in contexts])


class FullLoRA(FullText):
    """The raw passages read through the reader adapter of a full-lora checkpoint (nothing else was trained)."""

    name = "full-lora"

    def __init__(self, backbone: Backbone, reader_adapter: ReaderAdapter) -> None:
        super().__init__(backbone)
        self.reader_adapter = reader_adapter

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        return cls(backbone, spec.module_class().load_reader_adapter(checkpoint, backbone))


class StoredSlots:
    """A query-independent slot compressor (ComprExIT or mean-pool): every passage compressed alone."""

    batch_size = 32  # passages per compressor batch

    def __init__(self, name: str, compressor, ratio: int) -> None:
        self.name = name
        self.compressor = compressor
        self.ratio = ratio

    @property
    def reader_adapter(self) -> ReaderAdapter | None:
        return self.compressor.reader_adapter

    @classmethod
    def build(cls, spec: MethodSpec, backbone: Backbone, ratio: int, checkpoint: Checkpoint) -> Self:
        compressor = spec.compressor_class().from_pretrained(checkpoint, backbone, batch_size=cls.batch_size)
        return cls(spec.name, compressor, ratio)

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        texts = [text for example in examples for text in passage_texts(example)]
        soft = self.compressor.compress(texts, ratio=self.ratio, show_progress=False)
        contexts, start = [], 0
        for example in examples:
            contexts.append(soft.select(range(start, start + len(example.passages))))
            start += len(example.passages)
        return PreparedContexts(contexts, [c.num_slots for c in contexts])


class QueryAware(StoredSlots):
    """A query-aware compressor (COMI): passages are compressed together with the question, per question."""

    batch_size = 8  # (passage segment, question) pairs per batch

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts: list[SoftContext] = [
            self.compressor.compress(passage_texts(e), query=e.question, ratio=self.ratio, show_progress=False)
            for e in examples
        ]
        return PreparedContexts(contexts, [c.num_slots for c in contexts])


def build_method(name: str, backbone: Backbone, ratio: int = 4, checkpoint: Checkpoint = None) -> EvalMethod:
    """The registered method ``name``; ``checkpoint`` overrides the shipped trained module."""
    spec = get_method(name)
    return spec.evaluator_class().build(spec, backbone, ratio, checkpoint)
