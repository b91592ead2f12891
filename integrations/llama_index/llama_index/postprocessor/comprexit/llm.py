"""ComprExITLLM: the frozen reader as a LlamaIndex LLM, reading text prompts or soft slots.

As a plain text LLM (``complete``, ``stream_complete``) it reads the prompt as text, so it can be
``Settings.llm`` for an offline setup. The query engine and the response synthesizer of this package
read slots through :meth:`ComprExITLLM.read` / :meth:`ComprExITLLM.stream_read`, which go through
the same ``complete`` calls: callback handlers (``LlamaDebugHandler``) get an LLM event and the
instrumentation dispatcher an LLM span with its completion events, whose additional kwargs carry
the slot and token counts (never the slots).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.settings import Settings

from comprexit_rag.defaults import default_reader
from comprexit_rag.reading.adapter import ReaderAdapter
from comprexit_rag.reading.reader import Reader
from comprexit_rag.soft_context import SoftContext
from comprexit_rag.validation import check_positive_int

from ._checks import NamedComponent, check_known_arguments

__all__ = ["ComprExITLLM"]

# The slots of the current read: passed beside the prompt, so that events carry counts, never tensors.
_SLOTS: ContextVar[SoftContext | None] = ContextVar("comprexit_slots", default=None)
# The reader of the current read, when the slots are read through another adapter than the LLM's reader.
_READER: ContextVar[Reader | None] = ContextVar("comprexit_reader", default=None)


class ComprExITLLM(NamedComponent, CustomLLM):
    """The frozen reader LLM (default: the embedded SmolLM2, shared per process) for LlamaIndex.

    Args:
        reader: the :class:`comprexit_rag.Reader` (default :func:`comprexit_rag.defaults.default_reader`).
        max_new_tokens: longest answer, in tokens.

    >>> from llama_index.core import Settings
    >>> Settings.llm = ComprExITLLM()  # offline; reads text prompts with SmolLM2
    """

    max_new_tokens: int = Field(default=20, ge=1, description="Longest answer, in tokens.")

    _reader: Reader = PrivateAttr()

    def __init__(self, reader: Reader | None = None, *, max_new_tokens: int = 20, **kwargs: Any) -> None:
        check_known_arguments(type(self), kwargs)
        check_positive_int(max_new_tokens, "max_new_tokens")
        kwargs.setdefault("callback_manager", Settings.callback_manager)  # handlers set globally see the reads
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self._reader = reader if reader is not None else default_reader()

    @property
    def reader(self) -> Reader:
        return self._reader

    @property
    def metadata(self) -> LLMMetadata:
        backbone = self._reader.backbone
        return LLMMetadata(
            context_window=backbone.max_positions or 2048,
            num_output=self.max_new_tokens,
            model_name=backbone.name or "comprexit-reader",
            is_chat_model=False,
        )

    # ------------------------------------------------------------------ reading slots

    def read(
        self,
        question: str,
        context: SoftContext,
        *,
        max_new_tokens: int | None = None,
        adapter: ReaderAdapter | Literal["reader"] | None = "reader",
    ) -> CompletionResponse:
        """Answer ``question`` from the soft slots ``context``, as one LLM call (events and span).

        ``adapter``: the reader adapter the slots are read through (``None``: the frozen weights), when it is
        not the reader's own (``"reader"``), e.g. :attr:`CompressedNodes.reader_adapter`.
        """
        with self._reading(context, adapter):
            return self.complete(question, **_counts(context, max_new_tokens or self.max_new_tokens))

    def stream_read(
        self,
        question: str,
        context: SoftContext,
        *,
        max_new_tokens: int | None = None,
        adapter: ReaderAdapter | Literal["reader"] | None = "reader",
    ) -> Iterator[str]:
        """:meth:`read`, streamed: yields the answer's text pieces (the LLM event ends with the last)."""
        with self._reading(context, adapter):
            responses = self.stream_complete(question, **_counts(context, max_new_tokens or self.max_new_tokens))
        return (response.delta or "" for response in responses)

    @contextlib.contextmanager
    def _reading(self, context: SoftContext, adapter: ReaderAdapter | Literal["reader"] | None) -> Iterator[None]:
        """The slots (and the reader for them) that the LLM calls inside read."""
        reader = self._reader if adapter == "reader" else self._reader.through(adapter)
        slots, readers = _SLOTS.set(context), _READER.set(reader)
        try:
            yield
        finally:
            _READER.reset(readers)
            _SLOTS.reset(slots)

    # ------------------------------------------------------------------ the LLM interface

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        context, reader = _SLOTS.get(), _READER.get() or self._reader
        max_new_tokens = kwargs.get("max_new_tokens", self.max_new_tokens)
        text = reader.generate(prompt, context, max_new_tokens=max_new_tokens)
        return CompletionResponse(text=text, additional_kwargs=_counts(context, max_new_tokens))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        context, reader = _SLOTS.get(), _READER.get() or self._reader  # now: the generator below runs after a reset
        max_new_tokens = kwargs.get("max_new_tokens", self.max_new_tokens)
        pieces = reader.stream(prompt, context, max_new_tokens=max_new_tokens)
        counts = _counts(context, max_new_tokens)

        def responses() -> CompletionResponseGen:
            text = ""
            for piece in pieces:
                text += piece
                yield CompletionResponse(text=text, delta=piece, additional_kwargs=counts)

        return responses()


def _counts(context: SoftContext | None, max_new_tokens: int) -> dict[str, Any]:
    """What an LLM event reports about the context read: JSON-safe counts only."""
    if context is None:
        return {"max_new_tokens": max_new_tokens, "slots": 0, "context_tokens": 0}
    return {"max_new_tokens": max_new_tokens, "slots": context.num_slots, "context_tokens": context.num_tokens}
