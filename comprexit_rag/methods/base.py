"""The interface every compressor offers: texts (and, for a query-aware one, the question) -> SoftContext.

:class:`Compressor` is the protocol callers rely on; :class:`ModuleCompressor` is what the library's
compressors share: a frozen backbone, one trained module for it and the reader adapter trained with it
(if any), loading both from one checkpoint directory, the checks of ``compress``, and the fingerprint
their slots are keyed by.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from ..backbone import Backbone
from ..checkpoint import CheckpointedModule, check_fingerprint, resolve_checkpoint, state_digest
from ..errors import AdapterMismatchError, InvalidInputError
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter
from ..reading.pairing import FROZEN_READER
from ..soft_context import PassageDetails, SoftContext
from ..validation import check_positive_int, check_texts, resolve_ratio

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Compressor", "ModuleCompressor", "Query", "Texts", "head_digest"]

Texts = str | Sequence[str]  # one passage or a list of passages
Query = str | Sequence[str] | None  # the question: one for all passages, or one per passage


@runtime_checkable
class Compressor(Protocol):
    """What the pipeline, the slot service and the integrations call, whatever the method.

    ``fingerprint`` names the slots it makes (backbone, the module's weights and config): stores key
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
    ``compress_token_ids(token_ids, query=None, *, ratio, batch_size, show_progress, ...)``; their
    ``from_pretrained`` is :meth:`load` with their module class.

    ``reader_adapter``: the adapter trained with the module (saved in the checkpoint's ``reader_adapter/``),
    which its slots must be read through; ``None``: the module was trained for the frozen reader.
    """

    kind: ClassVar[str]
    query_aware: ClassVar[bool] = False
    # What the slots of a module trained for the frozen reader (no adapter) record as their reader adapter.
    frozen_reader_mark: ClassVar[str | None] = FROZEN_READER
    # What to load for a ratio the module was not trained at, appended to checked_ratio's warning.
    other_ratios_advice: ClassVar[str] = ""

    def __init__(
        self,
        backbone: Backbone,
        module: nn.Module,
        batch_size: int = 8,
        reader_adapter: ReaderAdapter | None = None,
    ) -> None:
        check_fingerprint(module.fingerprint, backbone.fingerprint, f"This {type(module).__name__}")
        if reader_adapter is not None:
            if reader_adapter.backbone is not backbone:
                raise InvalidInputError("The reader adapter is attached to another backbone object; use one backbone.")
            paired = reader_adapter.paired_head
            if paired is not None and paired != head_digest(module):
                raise AdapterMismatchError(
                    f"The reader adapter was trained with module {paired}, not with this {type(module).__name__} "
                    f"({head_digest(module)}). Load the module and the adapter from the same checkpoint directory."
                )
        self.backbone = backbone
        self.module = module.to(backbone.device).eval()
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.reader_adapter = reader_adapter
        self._fingerprint: str | None = None
        self._warned_ratios: set[int] = set()

    @classmethod
    def load(
        cls,
        module_class: type[CheckpointedModule],
        source: str | os.PathLike | nn.Module | None,
        backbone: str | os.PathLike | Backbone | None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> Self:
        """A compressor of ``source``: a ``module_class`` instance (used as it is), a checkpoint directory, the
        name of a checkpoint shipped with the package, or ``None`` for the one shipped for the default backbone.

        A checkpoint directory holding a ``reader_adapter/`` (a module trained with a reader LoRA) attaches that
        adapter to the backbone; :class:`~comprexit_rag.reading.reader.Reader` then reads through it.
        """
        backbone = Backbone.resolve(backbone, device)
        if isinstance(source, module_class):
            return cls(backbone, source, batch_size=batch_size)
        directory = resolve_checkpoint(source) if source is not None else module_class.default_checkpoint
        module = module_class.from_pretrained(directory)
        reader_adapter = None
        if (directory / ADAPTER_DIR).is_dir():
            # The module's backbone first: a checkpoint for another model is refused for what it is.
            check_fingerprint(module.fingerprint, backbone.fingerprint, f"This {module_class.__name__}")
            reader_adapter = ReaderAdapter.from_pretrained(directory / ADAPTER_DIR, backbone)
        return cls(backbone, module, batch_size=batch_size, reader_adapter=reader_adapter)

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
    def trained_ratios(self) -> list[int] | None:
        """The ratios its module was trained at; ``None`` where the checkpoint does not record them."""
        return None

    def checked_ratio(self, ratio: int | None) -> int:
        """``ratio`` validated (its default when ``None``), with a WARNING, once per ratio, when the module was
        not trained at it: a head trained at 4x reads 16x far worse (see the model cards)."""
        ratio = resolve_ratio(self, ratio)
        trained = self.trained_ratios
        if trained is not None and ratio not in trained and ratio not in self._warned_ratios:
            self._warned_ratios.add(ratio)
            logger.warning(
                "This %s was trained at ratio %s, not %d: its slots carry much less of the passage at %dx.%s",
                type(self.module).__name__,
                " and ".join(str(value) for value in trained),
                ratio,
                ratio,
                self.other_ratios_advice,
            )
        return ratio

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
        """A hash of what the slots depend on besides the passage (and, when query-aware, the question): the
        module's config and weights over this backbone.

        The reader adapter is not part of it: the backbone pass that feeds the module runs with the adapter
        disabled, so a module's slots are the same whichever adapter reads them, and a store keeps them when the
        reader is tuned again with the module frozen (``train --freeze-module``). What keeps slots from an
        adapter trained for another module is the adapter's ``paired_head``, checked when the two are put
        together, and the mark :meth:`soft_context` puts on the slots, checked by the reader.
        """
        return head_digest(self.module, salt=self.backbone.fingerprint.digest)

    def soft_context(
        self,
        passages: Sequence[torch.Tensor],
        token_counts: Sequence[int],
        details: list[PassageDetails] | None = None,
    ) -> SoftContext:
        """A SoftContext of slots this compressor made (e.g. read back from a store), marked with the reader
        adapter they are read through (without one: :attr:`frozen_reader_mark`)."""
        adapter = self.reader_adapter.digest if self.reader_adapter is not None else self.frozen_reader_mark
        return SoftContext.from_passages(passages, token_counts, details=details, reader_adapter=adapter)

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
        ratio = self.checked_ratio(ratio)
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


def head_digest(head: nn.Module, salt: str = "") -> str:
    """A hash of a trained module's config and weights (``salt`` first): what stores and reader adapters pair with."""
    return state_digest(head.config.to_dict(), head.state_dict(), salt)
