"""The on-disk format of a :class:`~comprexit_rag.slots.store.SlotStore`: names, manifest records, checks.

Kept apart from the store's logic so that the format (what a manifest line holds, how shards are
named, what a valid fp16 slot tensor is) reads in one place.
"""

from __future__ import annotations

import errno
import hashlib
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError, StorageError

MANIFEST_NAME = "manifest.jsonl"
FINGERPRINT_NAME = "fingerprint.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".safetensors"
MANIFEST_VERSION = 1
DISK_DTYPE = torch.float16
FP16_MAX = float(torch.finfo(torch.float16).max)

Chunk = dict[str, tuple[torch.Tensor, int]]  # key -> (fp16 slots, token count), insertion-ordered


def fingerprint_dirname(fingerprint: str) -> str:
    """Return the sub-directory name holding the slots of one head fingerprint."""
    return "head-" + hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one committed slot tensor lives and what it looks like."""

    shard: str
    rows: int
    cols: int
    tokens: int


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """One committed shard as recorded in the manifest."""

    name: str
    sha256: str
    nbytes: int
    keys: tuple[str, ...]


REPAIR_HINT = (
    "run SlotStore.verify(repair=True) to retire it and recompute the missing keys (for a pipeline: "
    "`comprexit-rag index CORPUS --out DIR --verify`, which repairs the store and recompresses them)"
)

SHARD_NAME = re.compile(r"shard-[0-9a-f]+-[0-9a-f]{12}\.safetensors")


def shard_name(name: object) -> str:
    """A manifest's shard name, refused unless it is a bare shard file name of the store's directory."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ValueError(f"shard name {name!r} is not a shard file of this directory")
    return name


def storage_error(exc: OSError, what: str) -> StorageError:
    """A :class:`StorageError` carrying ``exc``'s errno and both messages."""
    if isinstance(exc, StorageError):
        return exc
    reason = exc.strerror or str(exc)
    return StorageError(exc.errno or errno.EIO, f"{reason}: {what}")


def fp16_slots(key: str, tensor: torch.Tensor, tokens: int, hidden: int | None) -> torch.Tensor:
    """Check one slot tensor and return its contiguous fp16 CPU copy."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"slots of {key} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise InvalidInputError(f"slots of {key} must be 2-D [S, H], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise InvalidInputError(f"slots of {key} are empty: shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InvalidInputError(f"slots of {key} must be a float tensor, got {tensor.dtype}")
    if hidden is not None and tensor.shape[1] != hidden:
        raise InvalidInputError(
            f"slots of {key} have hidden size {tensor.shape[1]}, the store holds hidden size {hidden} "
            "for this fingerprint; a different head needs a different fingerprint"
        )
    try:
        count = operator.index(tokens)
    except TypeError:
        count = -1
    if isinstance(tokens, bool) or count < 0:
        raise InvalidInputError(f"token count of {key} must be a non-negative int, got {tokens!r}")
    detached = tensor.detach().to("cpu")
    if not bool(torch.isfinite(detached).all()):
        raise InvalidInputError(f"slots of {key} contain NaN or inf; refusing to store them")
    half = detached.to(DISK_DTYPE).contiguous()
    if not bool(torch.isfinite(half).all()):
        raise InvalidInputError(f"slots of {key} exceed the fp16 range (|x| > {FP16_MAX:g}); refusing to store them")
    return half


def split_chunks(fresh: Chunk, max_bytes: int) -> Iterator[Chunk]:
    """``fresh`` in order, cut into chunks of at most ``max_bytes`` of fp16 payload (at least one entry each)."""
    chunk: Chunk = {}
    size = 0
    for key, (half, tokens) in fresh.items():
        nbytes = half.numel() * half.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = {}, 0
        chunk[key] = (half, tokens)
        size += nbytes
    if chunk:
        yield chunk
