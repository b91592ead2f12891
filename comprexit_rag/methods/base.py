"""The interface every compressor offers: texts (and, for a query-aware one, the question) -> SoftContext.

:class:`Compressor` is the protocol callers rely on; :class:`ModuleCompressor` is what the library's
compressors share: a frozen backbone, one trained module for it, the checks of ``compress`` and the
fingerprint their slots are keyed by.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..checkpoint import check_fingerprint, state_digest
from ..soft_context import SoftContext
from ..validation import check_positive_int, check_texts, resolve_ratio

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..backbone import Backbone
    from ..reading.adapter import ReaderAdapter

__all__ = ["Compressor", "ModuleCompressor", "Query", "Texts"]

Texts = str | Sequence[str]  # one passage or a list of passages
Query = str | Sequence[str] | None  # the question: one for all passages, or one per passage


@runtime_checkable
class Compressor(Protocol):
    """What the pipeline, the slot service and the integrations call, whatever the method.

    ``fingerprint`` names the slots it makes (backbone, weights, config, reader adapter): stores key
    on it. ``max_ratio`` bounds the ratio it accepts (the transport window of a slot head, COMI's
    ``max_ratio``), ``default_ratio`` is the one it was configured with. A ``query_aware`` compressor
    reads the question with each passage (``query`` is required), so its slots are made per query and
    never stored; the others ignore ``query``. ``reader_adapter`` is the adapter its slots must be
    read through (``None``: the frozen reader).
    """

    backbone: Backbone
    query_aware: bool

    @property
    def fingerprint(self) -> str: ...

    @property
    def max_ratio(self) -> int: ...

    @property
    def default_ratio(self) -> int: ...

    @property
    def reader_adapter(self) -> ReaderAdapter | None: ...

    def soft_context(self, passages: Sequence[torch.Tensor], token_counts: Sequence[int]) -> SoftContext:
        """Slots it made (e.g. read back from a store) as a SoftContext, marked for the reader they need."""
        ...

    def compress(self, texts: Texts, *, query: Query = None, ratio: int | None = None, **options: Any) -> SoftContext:
        """Slots of ``texts`` (``options``: ``batch_size``, ``show_progress``...)."""
        ...


class ModuleCompressor(abc.ABC):
    """A frozen backbone and one trained module for it (a slot head, a COMI merger), as a :class:`Compressor`.

    Subclasses set ``kind`` (the prefix of their fingerprints) and ``query_aware`` (then also override
    :meth:`check_queries`), and implement ``max_ratio`` and
    ``compress_token_ids(token_ids, query=None, *, ratio, batch_size, show_progress, ...)``.
    """

    kind: ClassVar[str]
    query_aware: ClassVar[bool] = False
    reader_adapter: ReaderAdapter | None = None

    def __init__(self, backbone: Backbone, module: nn.Module, batch_size: int = 8) -> None:
        check_fingerprint(module.fingerprint, backbone.fingerprint, f"This {type(module).__name__}")
        self.backbone = backbone
        self.module = module.to(backbone.device).eval()
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._fingerprint: str | None = None

    @property
    def config(self) -> Any:
        return self.module.config

    @property
    @abc.abstractmethod
    def max_ratio(self) -> int: ...

    @property
    def default_ratio(self) -> int:
        return self.config.ratio

    @property
    def fingerprint(self) -> str:
        """Names the slots it makes: backbone, the module's config and weights (see :meth:`slot_digest`).

        The config takes part because some of its fields (a window, a locality weight, a norm bound)
        change the slots without changing a weight. Computed once, at first use.
        """
        if self._fingerprint is None:
            self._fingerprint = f"{self.kind}-{self.slot_digest()}"
        return self._fingerprint

    def slot_digest(self) -> str:
        """A hash of what the slots depend on besides the passage (and, when query-aware, the question)."""
        return state_digest(self.config.to_dict(), self.module.state_dict(), salt=self.backbone.fingerprint.digest)

    def compress(
        self,
        texts: Texts,
        *,
        query: Query = None,
        ratio: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
        **options: Any,
    ) -> SoftContext:
        """Compress each passage (one string or a list) into slots; passages longer than a segment are
        compressed segment by segment and their slots concatenated in order: nothing is truncated.

        ``query``: the question (one string, or one per passage), required by a query-aware compressor
        and ignored by the others. ``ratio``: source tokens per slot (default the compressor's).
        """
        texts = check_texts(texts)
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
        ratio = resolve_ratio(self, ratio)
        self.check_queries(query, len(texts))
        if not texts:
            return SoftContext.empty(self.backbone.hidden_size)
        return self.compress_token_ids(
            self.backbone.tokenize(texts),
            query,
            ratio=ratio,
            batch_size=batch_size,
            show_progress=show_progress,
            **options,
        )

    def check_queries(self, query: Query, count: int) -> list[str] | None:
        """The question of each of ``count`` passages (``None``: a query-independent compressor ignores it)."""
        return None

    @abc.abstractmethod
    def compress_token_ids(
        self, token_ids: Sequence[Sequence[int]], query: Query = None, **options: Any
    ) -> SoftContext:
        """Like :meth:`compress`, for passages already tokenised (no special tokens)."""
