"""The methods the harness compares: each turns QA examples into reader contexts.

All of them use the same frozen backbone as reader, the same prompt and greedy decoding,
so differences come from the context alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch

from ..backbone import Backbone
from ..data import QAExample
from ..errors import InvalidInputError
from ..names import EVAL_METHODS as METHODS
from ..names import EVAL_RATIO_METHODS as RATIO_METHODS  # noqa: F401 (re-exported: importers use it)
from ..reader import Context
from ..soft_context import SoftContext


@dataclass
class PreparedContexts:
    contexts: list[Context]
    context_vectors: list[int]  # what the reader reads per example: slots, or text tokens


class EvalMethod(Protocol):
    name: str

    def prepare(self, examples: list[QAExample]) -> PreparedContexts: ...


def passage_texts(example: QAExample) -> list[str]:
    return [passage.formatted() for passage in example.passages]


class ClosedBook:
    name = "closed-book"

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        return PreparedContexts([None] * len(examples), [0] * len(examples))


class FullText:
    """The raw passages, joined with blank lines."""

    name = "full"

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts = [passage_texts(example) for example in examples]
        lengths = [len(self.backbone.tokenize(["\n\n".join(texts)])[0]) for texts in contexts]
        return PreparedContexts(contexts, lengths)


class Truncate:
    """The first 1/ratio of the context tokens, as text embeddings."""

    name = "truncate"

    def __init__(self, backbone: Backbone, ratio: int) -> None:
        self.backbone = backbone
        self.ratio = ratio

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

    def __init__(self, backbone: Backbone, checkpoint: str | os.PathLike | None) -> None:
        from ..baselines.soft_prompt import SoftPrompt
        from ..checkpoint import check_fingerprint

        self.backbone = backbone
        self.prompt = SoftPrompt.from_pretrained(checkpoint).to(backbone.device)
        check_fingerprint(self.prompt.fingerprint, backbone.fingerprint, "This soft prompt")

    @torch.no_grad()
    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts = [self.prompt.context(self.backbone, "\n\n".join(passage_texts(e))) for e in examples]
        return PreparedContexts(contexts, [c.shape[0] for c in contexts])


class StoredSlots:
    """A query-independent slot compressor (ComprExIT or mean-pool): every passage compressed alone."""

    def __init__(self, name: str, compressor, ratio: int) -> None:
        self.name = name
        self.compressor = compressor
        self.ratio = ratio

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        texts = [text for example in examples for text in passage_texts(example)]
        soft = self.compressor.compress(texts, ratio=self.ratio, show_progress=False)
        contexts, start = [], 0
        for example in examples:
            contexts.append(soft.select(range(start, start + len(example.passages))))
            start += len(example.passages)
        return PreparedContexts(contexts, [c.num_slots for c in contexts])


class QueryAware:
    """COMI: passages are encoded together with the question, so this runs per question."""

    name = "comi"

    def __init__(self, compressor, ratio: int) -> None:
        self.compressor = compressor
        self.ratio = ratio

    def prepare(self, examples: list[QAExample]) -> PreparedContexts:
        contexts: list[SoftContext] = [
            self.compressor.compress(passage_texts(e), query=e.question, ratio=self.ratio, show_progress=False)
            for e in examples
        ]
        return PreparedContexts(contexts, [c.num_slots for c in contexts])


def build_method(
    name: str, backbone: Backbone, ratio: int = 4, checkpoint: str | os.PathLike | None = None
) -> EvalMethod:
    """Instantiate a method by name; ``checkpoint`` overrides the shipped trained module."""
    if name == "closed-book":
        return ClosedBook()
    if name == "full":
        return FullText(backbone)
    if name == "truncate":
        return Truncate(backbone, ratio)
    if name == "full-tuned":
        return FullTuned(backbone, checkpoint)
    if name == "comprexit":
        from ..compressor import ComprExITCompressor

        return StoredSlots(name, ComprExITCompressor.from_pretrained(checkpoint, backbone, batch_size=32), ratio)
    if name == "mean-pool":
        from ..baselines.mean_pool import MeanPoolCompressor

        return StoredSlots(name, MeanPoolCompressor.from_pretrained(checkpoint, backbone, batch_size=32), ratio)
    if name == "comi":
        from ..comi import COMICompressor

        return QueryAware(COMICompressor.from_pretrained(checkpoint, backbone), ratio)
    raise InvalidInputError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
