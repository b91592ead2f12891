"""scripts/ship_head.py: shipping the shipped head again reproduces its files byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from comprexit_rag.errors import BackboneMismatchError
from comprexit_rag.methods.comprexit.head import DEFAULT_HEAD

SCRIPT = Path(__file__).parents[1] / "scripts" / "ship_head.py"
SHIPPED_FILES = [
    "config.json",
    "model.safetensors",
    "reader_adapter/adapter_model.safetensors",
    "reader_adapter/comprexit_adapter.json",
]


def load_script():
    spec = importlib.util.spec_from_file_location("ship_head", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reshipping_the_default_head_changes_no_byte(tmp_path):
    recorded = json.loads((DEFAULT_HEAD / "config.json").read_text())["training"]["config"]
    load_script().ship(DEFAULT_HEAD, tmp_path, {key: recorded[key] for key in ("output_dir", "init_from")})
    for name in SHIPPED_FILES:
        assert (tmp_path / name).read_bytes() == (DEFAULT_HEAD / name).read_bytes(), name


@pytest.mark.slow
def test_a_head_for_another_backbone_is_refused_before_anything_is_written(tmp_path):
    source = tmp_path / "run"
    (source / "reader_adapter").mkdir(parents=True)
    for name in SHIPPED_FILES[1:]:
        (source / name).write_bytes((DEFAULT_HEAD / name).read_bytes())
    metadata = json.loads((DEFAULT_HEAD / "config.json").read_text())
    metadata["backbone_fingerprint"]["hidden_size"] = 960
    (source / "config.json").write_text(json.dumps(metadata))
    with pytest.raises(BackboneMismatchError):
        load_script().ship(source, tmp_path / "out", {"output_dir": "runs/sft", "init_from": "runs/init"})
    assert not (tmp_path / "out").exists()
