"""Shared by the benchmark scripts beside it: what the machine is, and a median wall-clock timer."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls, after one untimed warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_environment(device: torch.device) -> dict[str, Any]:
    """Versions, cores, threads, the load average now, and the accelerator when ``device`` is one."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        info.update(
            device_name=torch.cuda.get_device_name(index),
            device_memory_bytes=properties.total_memory,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = info["processor"]
    return info
