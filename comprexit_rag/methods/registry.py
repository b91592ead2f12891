"""The method registry: every way of giving the reader a context is declared once, as a :class:`MethodSpec`.

In the spirit of peft's ``register_peft_method``: a spec names a method's trained module (and so its
config class and checkpoint kind), the compressor that serves it, the encoder that trains it, the
evaluation that scores it, and what kind of context it gives the reader (stored slots, query-aware
slots, text, or nothing). The CLI's choices, the trainer, the evaluation harness, the RAG pipeline and
both integrations look methods up here instead of keeping lists of names.

Classes are given as ``"module:attribute"`` strings (or as the classes themselves) and imported on
first use, so reading the registry (the CLI parser does) imports neither torch nor transformers.

>>> from comprexit_rag.methods import get_method, method_names
>>> get_method("comi").query_aware
True
>>> method_names(trainable=True)
('comprexit', 'mean-pool', 'comi', 'full-tuned', 'full-lora')
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidInputError

__all__ = ["MethodSpec", "describe_methods", "get_method", "method_names", "register_method", "registered_methods"]

ContextKind = Literal["slots", "text", "none"]
Stage = Literal["pretrain", "sft"]
STAGES: tuple[Stage, ...] = ("pretrain", "sft")
Ref = str | type | None  # "package.module:Attribute", the object itself, or nothing


@dataclass(frozen=True)
class MethodSpec:
    """One method: what the reader reads and the classes that make, serve, train and score it.

    Attributes:
        name: what ``--method`` and ``method=`` take.
        summary: one line for help texts.
        context: ``"slots"`` (vectors in the reader's input-embedding space), ``"text"`` (tokens) or
            ``"none"`` (closed-book).
        query_aware: the context depends on the question, so it is made per query and never stored.
        takes_ratio: the method compresses at a ratio (``eval --ratio`` applies).
        module: the trained module, a :class:`~comprexit_rag.checkpoint.CheckpointedModule` (its
            ``config_class`` is the method's config; its ``checkpoint_kind`` is written to disk).
        compressor: what turns texts into a :class:`~comprexit_rag.soft_context.SoftContext` (a
            :class:`~comprexit_rag.methods.base.Compressor`).
        encoder: the training encoder (``training.encoders``); ``encoder.build(spec, config, backbone)``.
        evaluator: the evaluation method (``evaluation.methods``); ``evaluator.build(spec, backbone, ratio,
            checkpoint)``.
        stages: the training stages the method runs (none: not trainable).
        reader_adapter: its module may train, and ship, a reader adapter (a LoRA on the reading pass).
        adapter_only: the reader adapter is all it trains (its module has no weights), so a run needs one.
        distill: its training may distil from the full-text reader (the context is slots of the passages).
        pipeline: :meth:`RAGPipeline.ask <comprexit_rag.rag.pipeline.RAGPipeline.ask>` and the
            integrations serve it.
    """

    name: str
    summary: str
    context: ContextKind
    query_aware: bool = False
    takes_ratio: bool = False
    module: Ref = None
    compressor: Ref = None
    encoder: Ref = None
    evaluator: Ref = None
    stages: tuple[Stage, ...] = ()
    reader_adapter: bool = False
    adapter_only: bool = False
    distill: bool = False
    pipeline: bool = False

    def __post_init__(self) -> None:
        if self.context not in ("slots", "text", "none"):
            raise InvalidInputError(f"Method {self.name!r}: context must be 'slots', 'text' or 'none'.")
        if self.query_aware and self.context != "slots":
            raise InvalidInputError(f"Method {self.name!r}: only a slot method can be query-aware.")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise InvalidInputError(f"Method {self.name!r}: unknown training stages {sorted(unknown)}.")
        if self.stages and (self.module is None or self.encoder is None):
            raise InvalidInputError(f"Method {self.name!r}: a trainable method needs a module and an encoder.")
        if self.adapter_only and not (self.reader_adapter and self.stages):
            raise InvalidInputError(f"Method {self.name!r}: an adapter-only method trains a reader adapter.")

    @property
    def storable(self) -> bool:
        """Query-independent slots: computed once per passage (at indexing) and kept in a slot store."""
        return self.context == "slots" and not self.query_aware

    @property
    def trainable(self) -> bool:
        return bool(self.stages)

    def module_class(self) -> Any:
        return _resolve(self.module, self.name, "module")

    def compressor_class(self) -> Any:
        return _resolve(self.compressor, self.name, "compressor")

    def encoder_class(self) -> Any:
        return _resolve(self.encoder, self.name, "training encoder")

    def evaluator_class(self) -> Any:
        return _resolve(self.evaluator, self.name, "evaluation")


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise InvalidInputError(f"A method named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def registered_methods() -> tuple[MethodSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_REGISTRY.values())


def method_names(**where: Any) -> tuple[str, ...]:
    """Names of the registered methods whose attributes equal ``where`` (``method_names(pipeline=True)``)."""
    return tuple(spec.name for spec in _REGISTRY.values() if all(getattr(spec, k) == v for k, v in where.items()))


def get_method(name: object, **where: Any) -> MethodSpec:
    """The spec registered as ``name``; an InvalidInputError naming the choices (those matching ``where``)."""
    choices = method_names(**where)
    if name not in choices:
        raise InvalidInputError(f"Unknown method {name!r}; expected one of {', '.join(choices)}.")
    return _REGISTRY[name]  # type: ignore[index]


def describe_methods(names: tuple[str, ...]) -> str:
    """``"name: summary; ..."`` of the methods ``names``, for help texts."""
    return "; ".join(f"{name}: {_REGISTRY[name].summary}" for name in names)


def _resolve(ref: Ref, method: str, what: str) -> Any:
    if ref is None:
        raise InvalidInputError(f"Method {method!r} has no {what}.")
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)
