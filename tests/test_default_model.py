"""The converted copy of the default backbone: when a cached copy is used and when it is converted again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comprexit_rag.default_model import CHECKSUM_FILENAME, conversion_problem, special_token_ids
from comprexit_rag.durable import sha256_file

SPECIAL = [
    {"id": 0, "content": "<|endoftext|>"},
    {"id": 1, "content": "<|im_start|>"},
    {"id": 2, "content": "<|im_end|>"},
]


def converted_copy(directory: Path, eos_token: str = "<|im_end|>") -> Path:
    """The files of a converted copy (weights as stand-in bytes), as ``convert_gguf`` writes them."""
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"weights")
    checksums = {"model.safetensors": sha256_file(directory / "model.safetensors")}
    (directory / CHECKSUM_FILENAME).write_text(json.dumps(checksums))
    (directory / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    (directory / "tokenizer.json").write_text(json.dumps({"added_tokens": SPECIAL}))
    tokenizer_config = {"bos_token": "<|im_start|>", "eos_token": eos_token, "pad_token": "<|im_end|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def test_a_whole_copy_is_used(tmp_path):
    assert conversion_problem(converted_copy(tmp_path / "copy")) is None


def test_a_copy_whose_tokenizer_names_bos_as_eos_is_converted_again(tmp_path):
    # What transformers 5.17's GGUF converter wrote for SmolLM2 (session 20).
    problem = conversion_problem(converted_copy(tmp_path / "copy", eos_token="<|im_start|>"))
    assert problem is not None and "eos token" in problem and "<|im_end|>" in problem


@pytest.mark.parametrize("damage", ["weights", "checksum file", "tokenizer config"])
def test_a_damaged_copy_is_converted_again(tmp_path, damage):
    directory = converted_copy(tmp_path / "copy")
    if damage == "weights":
        (directory / "model.safetensors").write_bytes(b"other weights")
    elif damage == "checksum file":
        (directory / CHECKSUM_FILENAME).unlink()
    else:
        (directory / "tokenizer_config.json").write_text("{not json")
    assert conversion_problem(directory) is not None


def test_special_token_ids_leave_out_the_roles_a_config_does_not_name():
    assert special_token_ids({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}) == {"bos": 1, "eos": 2}


def test_the_default_copy_names_the_configs_special_tokens(default_tokenizer):
    assert (default_tokenizer.bos_token, default_tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert default_tokenizer.pad_token == "<|im_end|>"
