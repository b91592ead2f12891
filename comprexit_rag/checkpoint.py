"""Saving and loading trainable modules as safetensors + JSON, tied to a backbone fingerprint.

Nothing here unpickles: weights are safetensors, metadata is JSON. :class:`CheckpointedModule`
gives every trainable module (heads, the COMI merger, the soft prompt) the same
``save_pretrained`` / ``from_pretrained``; each declares only its kind, config class and
default checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import BackboneFingerprint
from .durable import atomic_write
from .errors import BackboneMismatchError, CheckpointError, InvalidInputError

logger = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).parent / "pretrained"  # the checkpoints shipped with the package
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointConfig:
    """Base of the dataclass configs stored under ``"config"`` in ``config.json``, field by field."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        if not isinstance(values, dict):
            raise TypeError(f"the config must be a JSON object, got {type(values).__name__}")
        return cls(**values)


class CheckpointedModule(nn.Module):
    """A trainable module saved as ``config.json`` + ``model.safetensors`` for one backbone.

    Subclasses set ``self.config`` (a :class:`CheckpointConfig`) and ``self.fingerprint`` and
    declare the class attributes below; they are rebuilt as ``cls(config, fingerprint)`` unless
    they override :meth:`from_config`.
    """

    checkpoint_kind: ClassVar[str]  # written to both files and checked on load
    config_class: ClassVar[type[CheckpointConfig]]
    description: ClassVar[str]  # what to call it in messages, e.g. "ComprExIT head"
    default_checkpoint: ClassVar[Path]  # loaded by ``from_pretrained()`` with no directory

    config: CheckpointConfig
    fingerprint: BackboneFingerprint

    def __init__(self, config: CheckpointConfig | None, fingerprint: BackboneFingerprint) -> None:
        super().__init__()
        if config is not None:  # a module whose config is read off its weights passes None
            self.config = config
        self.fingerprint = fingerprint

    @classmethod
    def from_config(cls, config: CheckpointConfig, fingerprint: BackboneFingerprint) -> Self:
        return cls(config, fingerprint)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, **extra: Any) -> Path:
        """Write ``config.json`` (with the backbone fingerprint and ``extra``) and ``model.safetensors``."""
        return save_module(
            directory,
            self,
            kind=self.checkpoint_kind,
            config=self.config.to_dict(),
            fingerprint=self.fingerprint,
            extra=extra,
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike | None = None, device: str | torch.device | None = None
    ) -> Self:
        """Load a saved module: a checkpoint directory, the name of one shipped with the package (see
        :func:`packaged_checkpoints`), or ``None`` for the one shipped for the default backbone."""
        directory = resolve_checkpoint(directory) if directory is not None else cls.default_checkpoint
        if directory == cls.default_checkpoint and not directory.is_dir():
            raise CheckpointError(
                f"No default {cls.description} is shipped at {directory}; train one with `comprexit-rag train` "
                "or pass a checkpoint directory."
            )
        if not directory.exists():
            raise CheckpointError(
                f"{directory} does not exist. Pass a checkpoint directory, or the name of one shipped with "
                f"comprexit-rag: {', '.join(packaged_checkpoints())}."
            )
        metadata = read_metadata(directory, cls.checkpoint_kind)
        try:
            config = cls.config_class.from_dict(metadata["config"])
        except (KeyError, TypeError, InvalidInputError) as error:
            raise CheckpointError(
                f"{directory}/{CONFIG_NAME} has an invalid {cls.description} config: {error} "
                "Fix that value or re-download the checkpoint."
            ) from error
        module = cls.from_config(config, fingerprint_from_metadata(metadata))
        load_into(module, load_state_dict(directory), directory)
        logger.info("Loaded %s from %s (%d parameters)", cls.description, directory, module.num_parameters())
        return module.to(device) if device is not None else module


def packaged_checkpoints() -> list[str]:
    """The names of the checkpoints shipped with the package, each loadable by name with ``from_pretrained``."""
    return sorted(path.name for path in PRETRAINED_DIR.iterdir() if (path / CONFIG_NAME).is_file())


def packaged_checkpoint(source: str | os.PathLike) -> Path | None:
    """The shipped checkpoint ``source`` names (a bare name such as ``"comprexit-smollm2-135m-multi-ratio"``),
    or ``None``: a path, or a name that is not shipped. An existing local path of that name wins, as a local
    directory does over a Hub name in ``transformers``."""
    if not isinstance(source, str) or Path(source).name != source or Path(source).exists():
        return None
    directory = PRETRAINED_DIR / source
    return directory if (directory / CONFIG_NAME).is_file() else None


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """The directory of ``source``: a shipped checkpoint's name, or a path."""
    return packaged_checkpoint(source) or Path(source).expanduser()


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
        "backbone_fingerprint": fingerprint.to_dict(),
        **(extra or {}),
    }
    atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path), metadata={"kind": kind}))
    # No final newline: the shipped config.json files are resaved byte for byte.
    atomic_write(directory / CONFIG_NAME, json.dumps(metadata, indent=2).encode())
    return directory


def read_metadata(directory: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read and check the JSON metadata of a checkpoint of the given kind."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"No {CONFIG_NAME} in {directory}: not a comprexit-rag checkpoint directory.")
    metadata = read_json_object(config_path, "a checkpoint config", "re-save or re-download it")
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {metadata.get('kind')!r} checkpoint, expected {kind!r}.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has format version {metadata.get('format_version')}, this library reads {FORMAT_VERSION}."
        )
    return metadata


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_safetensors(Path(directory) / WEIGHTS_NAME, f"No {WEIGHTS_NAME} in {directory}.")


def read_json_object(path: Path, what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path`` (an existing file); a CheckpointError naming ``what`` it should be and ``remedy``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); {remedy}.") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not {what} (an object); {remedy}.")
    return value


def load_safetensors(path: Path, missing: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a CheckpointError (``missing`` when there is no file) otherwise."""
    if not path.is_file():
        raise CheckpointError(missing)
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


def state_digest(config: dict[str, Any], state: dict[str, torch.Tensor], salt: str = "") -> str:
    """A short hash of a module's config and weights (``salt`` first): what its outputs are keyed by."""
    digest = hashlib.sha256(salt.encode())
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_fingerprint(expected: BackboneFingerprint, actual: BackboneFingerprint, what: str) -> None:
    """Refuse to combine a module with a backbone it was not trained on."""
    if expected != actual:
        raise BackboneMismatchError(
            f"{what} was trained for backbone {expected.describe()} but the backbone in use is "
            f"{actual.describe()}. Load the backbone the head was trained on, or train a head for this one "
            "with `comprexit-rag train`."
        )
