"""Corpus-scale slot compression on Ray Data, written to the SlotStore the pipeline reads.

Design: a pool of Ray actors (one ``map_batches`` stage with a callable class) loads the
backbone and the head once per actor and compresses batches of passages; each batch comes back
as store keys, token counts and fp16 slots (numpy). The *driver* is the only writer: it
commits the streamed batches to one :class:`~comprexit_rag.slots.SlotStore` with ``put_many``
(one shard per ``shard_size`` passages). A single writer keeps the store free of duplicate
keys and needs no shared file system between workers; the driver only copies fp16 bytes, so
it keeps up with many GPU actors (about 45 KB per 150-token passage with SmolLM2 at ratio 4).

The store is keyed exactly like :class:`~comprexit_rag.rag.pipeline.RAGPipeline`'s (:mod:`comprexit_rag.slots.keys`):
root ``<pipeline>/slots``, fingerprint ``"<compressor fingerprint>/ratio=<ratio>"``, key
``content_key(text)`` of the *formatted* passage (``"title\\ntext"``, see
:meth:`~comprexit_rag.data.Passage.formatted`). A pipeline opened on that directory with the
same backbone and head therefore finds every slot and compresses nothing.

>>> report = compress_corpus_with_ray(texts, "my-index/slots", head="my-head", ratio=4,
...                                   num_actors=8, num_gpus_per_actor=1)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BackboneMismatchError, InvalidInputError
from ..slots import SlotStore, content_key
from ..slots.keys import store_fingerprint as slot_store_fingerprint
from ..validation import check_positive_int, check_texts

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

__all__ = ["RayIndexReport", "SlotCompressionActor", "compress_corpus_with_ray", "slot_store_fingerprint"]

ModelSource = str | os.PathLike[str] | None


def _import_ray() -> Any:
    """Import ray lazily: it is an optional dependency (``pip install "ray[data]"``)."""
    try:
        import ray
        import ray.data  # the Data library needs the "data" extra (pyarrow, pandas)
    except ImportError as error:
        raise ImportError(
            'compress_corpus_with_ray needs Ray Data: pip install "ray[data]" (CPU wheels are on PyPI).'
        ) from error
    return ray


@dataclass(frozen=True)
class RayIndexReport:
    """What one :func:`compress_corpus_with_ray` call did."""

    passages: int  # passages seen: unique texts given (list) or rows read (Dataset)
    skipped: int  # already in the store before the run (list input only; not sent to Ray)
    compressed: int  # passages compressed by the actors in this run
    written: int  # new store entries committed (compressed minus keys that were already stored)
    seconds: float  # wall time of the whole call, model loading and Ray start-up included
    worker_seconds: float  # sum over actors of time spent inside ``compress`` (no loading, no I/O)
    directory: Path  # the SlotStore root (``<pipeline>/slots`` for a pipeline)
    fingerprint: str  # the SlotStore fingerprint ("<compressor fingerprint>/ratio=<ratio>")

    @property
    def passages_per_worker_second(self) -> float:
        """Compression throughput of one actor: passages per second of compute."""
        return self.compressed / self.worker_seconds if self.worker_seconds > 0 else 0.0


def _load_compressor(backbone: ModelSource, head: ModelSource, device: str | None, batch_size: int) -> Any:
    from ..methods.comprexit.compressor import ComprExITCompressor

    return ComprExITCompressor.from_pretrained(head, backbone, device=device, batch_size=batch_size)


def _describe(backbone: ModelSource, head: ModelSource, ratio: int | None, device: str | None) -> tuple[str, int]:
    """(compressor fingerprint, resolved ratio), computed where the actors run (a Ray task)."""
    from ..validation import validate_ratio

    compressor = _load_compressor(backbone, head, device, 1)
    resolved = validate_ratio(compressor.config.ratio if ratio is None else ratio, compressor.config.window)
    return compressor.fingerprint, resolved


class SlotCompressionActor:
    """Ray Data callable class: loads backbone + head once, then compresses batches of passages.

    ``__call__`` takes a numpy batch with a text column and returns ``key`` (content hash),
    ``tokens`` (int64), ``slots`` (one fp16 ``[S_i, H]`` array per passage) and ``seconds``
    (the batch's compression time spread over its rows).
    """

    def __init__(
        self,
        backbone: ModelSource,
        head: ModelSource,
        ratio: int,
        batch_size: int,
        device: str | None,
        fingerprint: str,
        text_column: str = "text",
    ) -> None:
        self.compressor = _load_compressor(backbone, head, device, batch_size)
        if self.compressor.fingerprint != fingerprint:
            raise BackboneMismatchError(
                f"this worker loaded compressor {self.compressor.fingerprint}, the run expects {fingerprint}; "
                "every node must see the same backbone and head files"
            )
        self.ratio = ratio
        self.batch_size = batch_size
        self.text_column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch[self.text_column]]
        started = time.perf_counter()
        soft = self.compressor.compress(texts, ratio=self.ratio, batch_size=self.batch_size, show_progress=False)
        seconds = time.perf_counter() - started
        slots = np.empty(len(texts), dtype=object)  # ragged: filled one by one, never broadcast
        for row, passage in enumerate(soft.passages()):
            slots[row] = passage.to(torch.float16).cpu().numpy()
        return {
            "key": np.array([content_key(text) for text in texts]),
            "tokens": soft.token_counts.numpy().astype(np.int64),
            "slots": slots,
            "seconds": np.full(len(texts), seconds / max(len(texts), 1)),
        }


def compress_corpus_with_ray(
    passages: Sequence[str] | ray.data.Dataset,
    out_dir: str | os.PathLike[str],
    *,
    backbone: ModelSource = None,
    head: ModelSource = None,
    ratio: int | None = None,
    batch_size: int = 32,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    device: str | None = None,
    shard_size: int = 4096,
    text_column: str = "text",
) -> RayIndexReport:
    """Compress a corpus with a pool of Ray actors into the SlotStore under ``out_dir``.

    Args:
        passages: formatted passage texts (``"title\\ntext"`` as the pipeline stores them), or a
            ``ray.data.Dataset`` with a ``text_column`` of such strings. A list is deduplicated
            and the passages already stored are skipped before anything is sent to Ray (cheap
            resume); a Dataset is read as is (stored keys are recompressed but not rewritten).
        out_dir: SlotStore root; for a :class:`~comprexit_rag.rag.pipeline.RAGPipeline` that is
            ``<pipeline directory>/slots``.
        backbone: Hugging Face name or local path every worker can load (``None``: the embedded
            default SmolLM2). Actors rebuild the models from it, so pass paths, not objects.
        head: ComprExIT head checkpoint directory (``None``: the shipped default head).
        ratio: compression ratio (default: the head's).
        batch_size: passages per actor call, compressed in one forward batch.
        num_actors: size of the actor pool (one model copy each).
        num_gpus_per_actor: GPUs reserved per actor (0: CPU; fractions share a GPU).
        num_cpus_per_actor: CPUs reserved per actor (Ray also caps its torch threads to this).
        device: torch device inside the actors (default: CUDA when Ray gave the actor a GPU).
        shard_size: passages per committed shard; an interrupted run loses at most one shard.
        text_column: the text column of a Dataset input.

    Ray is initialised with its defaults if it is not yet (call ``ray.init`` first to choose).
    A probe task loads the models once first, to learn the fingerprint and the ratio where the
    actors run; every actor checks that it loaded the same compressor.
    """
    ray = _import_ray()
    started = time.perf_counter()
    check_positive_int(batch_size, "batch_size")
    check_positive_int(num_actors, "num_actors")
    check_positive_int(shard_size, "shard_size")
    if num_gpus_per_actor < 0 or num_cpus_per_actor < 0:
        raise InvalidInputError("num_gpus_per_actor and num_cpus_per_actor must be >= 0")
    is_dataset = isinstance(passages, ray.data.Dataset)
    if not is_dataset:
        if isinstance(passages, str):
            raise InvalidInputError("passages must be a list of texts (or a ray Dataset), not one string")
        texts = list(dict.fromkeys(check_texts(list(passages))))  # unique, in order

    resources = {"num_cpus": num_cpus_per_actor, "num_gpus": num_gpus_per_actor}
    probe = ray.remote(_describe).options(**resources)
    fingerprint, ratio = ray.get(probe.remote(backbone, head, ratio, device))
    store = SlotStore(Path(out_dir), slot_store_fingerprint(fingerprint, ratio))

    if is_dataset:
        dataset, seen, skipped = passages, 0, 0
    else:
        keys = [content_key(text) for text in texts]
        absent = set(store.missing(keys))
        todo = [text for text, key in zip(texts, keys, strict=True) if key in absent]
        seen, skipped = len(texts), len(texts) - len(todo)
        if not todo:
            return _report(seen, skipped, 0, 0, started, 0.0, store)
        dataset = ray.data.from_items([{text_column: text} for text in todo])

    compressed = dataset.map_batches(
        SlotCompressionActor,
        fn_constructor_kwargs={
            "backbone": os.fspath(backbone) if backbone is not None else None,
            "head": os.fspath(head) if head is not None else None,
            "ratio": ratio,
            "batch_size": batch_size,
            "device": device,
            "fingerprint": fingerprint,
            "text_column": text_column,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        **resources,
    )
    done = written = 0
    worker_seconds = 0.0
    for batch in compressed.iter_batches(batch_size=shard_size, batch_format="numpy"):
        keys = [str(key) for key in batch["key"]]
        # Copies: arrays coming out of Arrow may be read-only views.
        slots = [torch.from_numpy(np.array(passage, dtype=np.float16)) for passage in batch["slots"]]
        written += len(store.put_many(keys, slots, batch["tokens"].tolist()))
        done += len(keys)
        worker_seconds += float(batch["seconds"].sum())
        logger.info("committed %d passages (%d new) to %s", done, written, store.path)
    if is_dataset:
        seen = done
    return _report(seen, skipped, done, written, started, worker_seconds, store)


def _report(
    seen: int, skipped: int, done: int, written: int, started: float, worker_seconds: float, store: SlotStore
) -> RayIndexReport:
    return RayIndexReport(
        passages=seen,
        skipped=skipped,
        compressed=done,
        written=written,
        seconds=time.perf_counter() - started,
        worker_seconds=worker_seconds,
        directory=store.root,
        fingerprint=store.fingerprint,
    )
