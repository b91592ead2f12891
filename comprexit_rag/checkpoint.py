"""Saving and loading trainable modules as safetensors + JSON, tied to a backbone fingerprint.

Nothing here unpickles: weights are safetensors, metadata is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import BackboneFingerprint
from .errors import BackboneMismatchError, CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save_module(
    directory: str | os.PathLike,
    module: nn.Module,
    *,
    kind: str,
    config: dict[str, Any],
    fingerprint: BackboneFingerprint,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().float().cpu().contiguous() for name, tensor in module.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "backbone_fingerprint": asdict(fingerprint),
        **(extra or {}),
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path), metadata={"kind": kind}))
    _atomic_write(directory / CONFIG_NAME, lambda path: path.write_text(json.dumps(metadata, indent=2)))
    return directory


def read_metadata(directory: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read and check the JSON metadata of a checkpoint of the given kind."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"No {CONFIG_NAME} in {directory}: not a comprexit-rag checkpoint directory.")
    try:
        metadata = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON ({error}); re-save or re-download it.") from error
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {metadata.get('kind')!r} checkpoint, expected {kind!r}.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has format version {metadata.get('format_version')}, this library reads {FORMAT_VERSION}."
        )
    return metadata


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"No {WEIGHTS_NAME} in {directory}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error}); re-save or re-download it.") from error


def load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load weights strictly, turning shape or key mismatches into a CheckpointError."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"Weights in {source} do not fit this module: {error}") from error
    if any(not torch.isfinite(p).all() for p in module.parameters()):
        raise CheckpointError(f"Weights in {source} contain NaN or inf values.")


def fingerprint_from_metadata(metadata: dict[str, Any]) -> BackboneFingerprint:
    try:
        return BackboneFingerprint(**metadata["backbone_fingerprint"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"Checkpoint metadata has no valid backbone fingerprint: {error}") from error


def check_fingerprint(expected: BackboneFingerprint, actual: BackboneFingerprint, what: str) -> None:
    """Refuse to combine a module with a backbone it was not trained on."""
    if expected != actual:
        raise BackboneMismatchError(
            f"{what} was trained for backbone {expected.describe()} but the backbone in use is "
            f"{actual.describe()}. Load the backbone the head was trained on, or train a head for this one "
            "with `comprexit-rag train`."
        )


def _atomic_write(path: Path, write) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
