"""Loading a pipeline's parts: the backbone, the retriever, and the learned modules with their fallbacks.

The checkpoint policy of :class:`~comprexit_rag.rag.pipeline.RAGPipeline` (and of the LlamaIndex
postprocessor's ``from_defaults``): a head given as an instance, a directory (with its reader adapter)
or ``"default"`` (the shipped head, or a loudly logged untrained one when none fits the backbone), and
how ``pipeline.json`` refers to each.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers import SentenceTransformer

from ..backbone import Backbone
from ..checkpoint import CheckpointedModule, packaged_checkpoint, resolve_checkpoint
from ..errors import CheckpointError, InvalidInputError
from ..methods.base import head_digest
from ..methods.comprexit.compressor import ComprExITCompressor
from ..methods.comprexit.head import DEFAULT_HEAD, ComprExITHead
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter
from ..retrieval.dense import DenseRetriever
from .directory import HEAD_DIR, RETRIEVER_DIR, UNTRAINED_HEAD_DIR

if TYPE_CHECKING:
    from ..methods.comi import COMICompressor, COMIMerger

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT",
    "load_backbone",
    "load_comi_compressor",
    "load_comi_merger_or_untrained",
    "load_compressor",
    "load_head_or_untrained",
]

DEFAULT = "default"  # what pipeline.json records for the embedded backbone and the shipped head


def load_head_or_untrained(backbone: Backbone, untrained_dir: str | os.PathLike[str] | None = None) -> ComprExITHead:
    """The shipped default head for ``backbone``; an untrained head (WARNING) when there is none.

    The trained head ships at :data:`comprexit_rag.methods.comprexit.head.DEFAULT_HEAD`. Until it does (or when
    ``backbone`` is not the backbone it was trained for), this returns a randomly initialised
    head, with a logged WARNING that answers will be poor. Slots depend on the head's weights,
    so the untrained head is saved to ``untrained_dir`` on first use and reloaded from there
    afterwards: stored slots stay valid across runs. Once the trained head ships it is picked
    up automatically; its new fingerprint makes the pipeline recompute every slot.
    """
    head, reason = shipped_module(ComprExITHead, backbone)
    if head is not None:
        return head
    saved = Path(untrained_dir) if untrained_dir is not None else None
    if saved is not None and saved.is_dir():
        head = ComprExITHead.from_pretrained(saved)
        if head.fingerprint == backbone.fingerprint:
            logger.warning("Using the UNTRAINED ComprExIT head saved in %s (%s): answers will be poor.", saved, reason)
            return head
    logger.warning(
        "Using a randomly initialised, UNTRAINED ComprExIT head (%s): answers will be poor. "
        "Pass a trained head with head=PATH (CLI: --head PATH).",
        reason,
    )
    head = ComprExITHead.for_backbone(backbone)
    if saved is not None:
        head.save_pretrained(saved, untrained=True)
    return head


def shipped_module(module_class: type[CheckpointedModule], backbone: Backbone) -> tuple[Any, str]:
    """The module shipped for ``backbone`` (``module_class.default_checkpoint``), or ``None`` and why not."""
    directory = module_class.default_checkpoint
    if not directory.is_dir():
        return None, f"no trained {module_class.description} is shipped yet at {directory}"
    module = module_class.from_pretrained(directory)
    if module.fingerprint != backbone.fingerprint:
        trained_for = module.fingerprint.describe()
        return None, f"the shipped {module_class.description} was trained for {trained_for}, not {backbone.name}"
    return module, ""


def load_comi_compressor(backbone: Backbone, merger: str | os.PathLike[str] | COMIMerger | None) -> COMICompressor:
    """The COMI compressor over ``backbone``: of ``merger`` (a module, or a directory with the reader adapter the
    merger was trained with, if any), else the shipped one."""
    from ..methods.comi import COMICompressor

    if merger is None:
        return COMICompressor(backbone, load_comi_merger_or_untrained(backbone))
    return COMICompressor.from_pretrained(merger, backbone)


def load_comi_merger_or_untrained(backbone: Backbone) -> COMIMerger:
    """The shipped default COMI merger; an untrained one (WARNING) when none fits ``backbone``."""
    from ..methods.comi import COMIMerger

    merger, reason = shipped_module(COMIMerger, backbone)
    if merger is not None:
        return merger
    logger.warning("Using an UNTRAINED COMI merger (%s): COMI answers will be poor.", reason)
    return COMIMerger.for_backbone(backbone)


def load_backbone(
    backbone: str | os.PathLike[str] | Backbone | None, recorded: str | None, device: str | torch.device | None
) -> Backbone:
    """``backbone`` if given (an instance, a name or a path), else the recorded one."""
    if isinstance(backbone, Backbone):
        return backbone
    source = backbone if backbone is not None else recorded
    if source is None:
        raise InvalidInputError(
            "This pipeline was built from an in-memory backbone with no name; pass the same backbone= to load it."
        )
    if source == DEFAULT:
        return Backbone.from_pretrained(None, device=device)
    local = Path(source).expanduser()
    # A local directory is recorded by absolute path, so the pipeline loads from any working directory.
    return Backbone.from_pretrained(str(local.resolve()) if local.is_dir() else source, device=device)


def load_retriever(directory: Path, embedder: str | os.PathLike[str] | SentenceTransformer | None) -> DenseRetriever:
    try:
        return DenseRetriever.load(directory / RETRIEVER_DIR, embedder)
    except FileNotFoundError as error:
        raise CheckpointError(f"{directory} is incomplete ({error}); rebuild it with `index`.") from error


def resolve_compressor(
    directory: Path,
    head: str | os.PathLike[str] | ComprExITHead | None,
    recorded: str,
    backbone: Backbone,
    *,
    save: bool = True,
) -> tuple[ComprExITCompressor, str]:
    """The compressor of the head to use (with the head's reader adapter, if it has one) and how
    ``pipeline.json`` refers to the head (``"default"``, a shipped head's name, or a path).

    A head instance is saved to ``directory/head`` (unless ``save`` is false: build saves it under
    the index lock, so that a racing build cannot overwrite the head of another's pipeline).
    """
    if isinstance(head, ComprExITHead):
        if save:
            head.save_pretrained(directory / HEAD_DIR)
        return load_compressor(backbone, head), HEAD_DIR
    source = os.fspath(head) if head is not None else recorded
    if source == DEFAULT:
        return load_compressor(backbone, untrained_dir=directory / UNTRAINED_HEAD_DIR), DEFAULT
    packaged = packaged_checkpoint(source)
    if packaged is not None:  # recorded by name, so the pipeline loads with another install of the package
        return load_compressor(backbone, packaged), source
    head_dir = Path(source) if Path(source).is_absolute() or head is not None else directory / source
    return load_compressor(backbone, head_dir), source if head is None else str(head_dir.resolve())


def load_compressor(
    backbone: Backbone,
    head: str | os.PathLike[str] | ComprExITHead | None = None,
    *,
    untrained_dir: str | os.PathLike[str] | None = None,
) -> ComprExITCompressor:
    """The ComprExIT compressor of ``head`` over ``backbone``, with the head's reader adapter if it has one.

    ``head``: a head instance (used as it is), a checkpoint directory or a shipped head's name (its
    ``reader_adapter/`` is attached), or ``None`` for the default head and its adapter, or an untrained
    head when none fits ``backbone`` (see :func:`load_head_or_untrained`; ``untrained_dir`` keeps it across runs).
    """
    if isinstance(head, ComprExITHead):
        return ComprExITCompressor(backbone, head)
    if head is None:
        module = load_head_or_untrained(backbone, untrained_dir)
        head_dir = DEFAULT_HEAD if _is_saved_head(module, DEFAULT_HEAD) else None  # not the untrained fallback
    else:
        head_dir = resolve_checkpoint(head)
        module = ComprExITHead.from_pretrained(head_dir)
    adapter = None
    if head_dir is not None and (head_dir / ADAPTER_DIR).is_dir():
        adapter = ReaderAdapter.from_pretrained(head_dir / ADAPTER_DIR, backbone)
    return ComprExITCompressor(backbone, module, reader_adapter=adapter)


def _is_saved_head(head: ComprExITHead, directory: Path) -> bool:
    """Whether ``head`` holds the weights saved in ``directory`` (e.g. the shipped head, not a fallback)."""
    if not (directory / "model.safetensors").is_file():
        return False
    return head_digest(head) == head_digest(ComprExITHead.from_pretrained(directory))


def comi_source(merger: object) -> str | None:
    """How ``pipeline.json`` refers to the COMI merger given at build time (a path, else ``None``)."""
    return str(Path(merger).resolve()) if isinstance(merger, str | os.PathLike) else None
