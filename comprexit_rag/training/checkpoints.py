"""A run's resumable state, written so that a kill at any moment leaves one complete checkpoint.

``checkpoint/state.json`` (step, schedule, data identity) names the generation of files it belongs to,
``checkpoint/step-0000400/``: the module with its reader adapter, and the optimizer state. A save writes
a new generation whole, then replaces ``state.json`` atomically, then removes the older generations. So
the files ``state.json`` names are always complete and of its step, whenever the run is killed, and a
copy taken while the run goes on is consistent if it reads ``state.json`` first and then copies the
generation it names (what the GPU session's collector does, ``benchmarks/gpu/collect.sh``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..durable import atomic_write, atomic_write_json, fsync_directory
from ..methods.base import head_digest
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter

__all__ = ["STATE_FILE", "checkpoint_files", "read_state", "resume", "save_checkpoint", "save_module_and_adapter"]

STATE_FILE = "state.json"
GENERATION_PREFIX = "step-"
# Checkpoints written before generations kept these beside state.json.
UNNAMED_FILES = ("module", "optimizer.pt")


def save_module_and_adapter(directory: Path, module: torch.nn.Module, adapter: ReaderAdapter | None, **extra) -> None:
    """A head and its reader adapter as one checkpoint: ``config.json`` + weights, ``reader_adapter/``."""
    module.save_pretrained(directory, **extra)
    if adapter is not None:
        adapter.paired_head = head_digest(module)
        adapter.save_pretrained(directory / ADAPTER_DIR)


def read_state(directory: Path) -> dict | None:
    """The state of the checkpoint in ``directory``, or None when it holds no complete one."""
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_files(directory: Path, state: dict) -> Path:
    """The directory holding ``module/`` and ``optimizer.pt`` of the checkpoint whose state is ``state``."""
    return directory / state["files"] if "files" in state else directory


def save_checkpoint(
    directory: Path,
    module: torch.nn.Module,
    adapter: ReaderAdapter | None,
    optimizer: torch.optim.Optimizer,
    state: dict,
) -> None:
    """Module, adapter, optimizer and loop state as the newest generation; the older ones are removed after."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{GENERATION_PREFIX}{state['step']:07d}"
    current = read_state(directory)
    # Saved again at the same step (the end of a run that just saved): the same weights, already whole.
    if current is None or current.get("files") != name:
        files = directory / name
        shutil.rmtree(files, ignore_errors=True)  # left by a save killed before it was named
        save_module_and_adapter(files / "module", module, adapter)
        atomic_write(files / "optimizer.pt", lambda path: torch.save(optimizer.state_dict(), path))
        fsync_directory(files)
        fsync_directory(directory)
    atomic_write_json(directory / STATE_FILE, state | {"files": name}, indent=None)
    for path in directory.iterdir():
        stale_generation = path.name.startswith(GENERATION_PREFIX) and path.name != name
        if stale_generation or path.name in UNNAMED_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def resume(directory: Path, state: dict, adapter: ReaderAdapter | None, optimizer: torch.optim.Optimizer) -> dict:
    """Load the reader adapter and the optimizer of the checkpoint in ``directory`` whose state is ``state``
    (:func:`read_state`); returns the loop state. The module is built from the same files
    (:func:`checkpoint_files`), before the optimizer that holds its parameters."""
    files = checkpoint_files(directory, state)
    # ``adapter`` was built from these files (the trainer checks it against the run's configuration); loaded
    # again here into its float32 weights, which an adapter attached to a bf16 backbone first rounded.
    if adapter is not None:
        adapter.load_weights(files / "module" / ADAPTER_DIR)
    # On the CPU first: a run saved on a GPU may continue on another machine, and load_state_dict moves each
    # state tensor to its parameter's device.
    optimizer.load_state_dict(torch.load(files / "optimizer.pt", weights_only=True, map_location="cpu"))
    return {key: value for key, value in state.items() if key != "files"}
