"""Host-side layouts of batches: index arithmetic in numpy, and one copy to the device that does not wait.

Building a batch example by example on the device costs a few operations (and sometimes a read of
the device) per example; at training batch sizes that host work bounds the step. The batched paths
compute where everything goes on the host, send it in one copy, and gather or scatter once.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor is sent to a GPU without waiting for its queue.

    A copy from pageable host memory blocks until the GPU has run everything queued before it; from
    pinned memory the copy is queued on the stream like a kernel, and the host keeps going.
    """
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda" and not torch.compiler.is_compiling():
        # torch.compile cannot trace pin_memory; there the plain copy is used.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def concatenated_ranges(starts: np.ndarray | list[int], lengths: np.ndarray | list[int]) -> np.ndarray:
    """``range(start, start + length)`` for each pair, concatenated into one int64 array."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths  # where each range begins in the result
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
