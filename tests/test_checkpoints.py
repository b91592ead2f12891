"""The checkpoint format of every trainable module: shipped checkpoints load and re-save byte for byte.

``config.json`` is ``format_version``, ``kind``, ``config``, ``backbone_fingerprint`` and any
extra keys (``training``), in that order, indented by two; ``model.safetensors`` holds the
float32 state dict with ``{"kind": ...}`` as metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from comprexit_rag.checkpoint import CONFIG_NAME, PRETRAINED_DIR, WEIGHTS_NAME, packaged_checkpoints
from comprexit_rag.errors import CheckpointError
from comprexit_rag.methods.comi import DEFAULT_MERGER, COMIConfig, COMIMerger
from comprexit_rag.methods.comprexit.config import ComprExITConfig
from comprexit_rag.methods.comprexit.head import DEFAULT_HEAD, MULTI_RATIO_HEAD, ComprExITHead
from comprexit_rag.methods.mean_pool import DEFAULT_MEAN_POOL, MeanPoolConfig, MeanPoolHead
from comprexit_rag.methods.soft_prompt import SoftPrompt

SHIPPED = [
    (ComprExITHead, DEFAULT_HEAD, "comprexit-head"),
    (ComprExITHead, MULTI_RATIO_HEAD, "comprexit-head"),
    (MeanPoolHead, DEFAULT_MEAN_POOL, "mean-pool-head"),
    (COMIMerger, DEFAULT_MERGER, "comi-merger"),
]
STANDARD_KEYS = ("format_version", "kind", "config", "backbone_fingerprint")


def fresh(module_class: type, backbone) -> torch.nn.Module:
    torch.manual_seed(0)
    if module_class is SoftPrompt:
        return SoftPrompt.for_backbone(backbone, num_tokens=5)
    return module_class.for_backbone(backbone)


@pytest.mark.parametrize(("module_class", "directory", "kind"), SHIPPED, ids=[path.name for _, path, _ in SHIPPED])
def test_shipped_checkpoints_load_and_resave_byte_for_byte(module_class, directory, kind, tmp_path):
    if not directory.is_dir():
        pytest.skip(f"{directory} is not shipped in this checkout")
    metadata = json.loads((directory / CONFIG_NAME).read_text())
    assert metadata["kind"] == kind
    module = module_class.from_pretrained(directory)
    assert module.config.to_dict() == metadata["config"]
    assert dataclasses.asdict(module.fingerprint) == metadata["backbone_fingerprint"]
    assert type(module).from_pretrained().state_dict().keys() == module.state_dict().keys()  # the default

    extra = {key: value for key, value in metadata.items() if key not in STANDARD_KEYS}
    saved = module.save_pretrained(tmp_path / "resaved", **extra)
    assert (saved / CONFIG_NAME).read_bytes() == (directory / CONFIG_NAME).read_bytes()
    assert (saved / WEIGHTS_NAME).read_bytes() == (directory / WEIGHTS_NAME).read_bytes()


@pytest.mark.parametrize("module_class", [ComprExITHead, MeanPoolHead, COMIMerger, SoftPrompt])
def test_round_trip_and_layout(module_class, tiny_backbone, tmp_path):
    module = fresh(module_class, tiny_backbone)
    directory = module.save_pretrained(tmp_path / "module", training={"steps": 3})
    assert directory == tmp_path / "module"

    record = json.loads((directory / CONFIG_NAME).read_text())
    assert list(record) == [*STANDARD_KEYS, "training"]
    assert record["format_version"] == 1 and record["training"] == {"steps": 3}
    assert record["backbone_fingerprint"] == dataclasses.asdict(tiny_backbone.fingerprint)
    assert (directory / CONFIG_NAME).read_text() == json.dumps(record, indent=2)
    with safe_open(str(directory / WEIGHTS_NAME), "pt") as weights:
        assert weights.metadata() == {"kind": record["kind"]}
        assert sorted(weights.keys()) == sorted(module.state_dict())

    loaded = module_class.from_pretrained(directory)
    assert type(loaded) is module_class and loaded.fingerprint == module.fingerprint
    assert loaded.config.to_dict() == record["config"] == module.config.to_dict()
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_config_dicts_are_the_documented_ones(tiny_backbone):
    hidden, states = tiny_backbone.hidden_size, tiny_backbone.num_hidden_states
    assert fresh(SoftPrompt, tiny_backbone).config.to_dict() == {"num_tokens": 5, "hidden_size": hidden}
    assert fresh(MeanPoolHead, tiny_backbone).config.to_dict() == dataclasses.asdict(MeanPoolConfig(hidden, states))
    assert fresh(COMIMerger, tiny_backbone).config.to_dict() == dataclasses.asdict(COMIConfig(hidden, states))
    # position_binding came after heads were shipped: written only when on, so their config.json and digests stay.
    written = dataclasses.asdict(ComprExITConfig(hidden, states))
    assert written.pop("position_binding") is False
    assert fresh(ComprExITHead, tiny_backbone).config.to_dict() == written
    bound = ComprExITConfig(hidden, states, position_binding=True).to_dict()
    assert bound == written | {"position_binding": True}


@pytest.mark.parametrize("module_class", [ComprExITHead, MeanPoolHead, COMIMerger, SoftPrompt])
def test_another_kind_or_a_bad_config_is_a_checkpoint_error(module_class, tiny_backbone, tmp_path):
    others = [cls for cls in (ComprExITHead, MeanPoolHead, COMIMerger, SoftPrompt) if cls is not module_class]
    for other in others:
        directory = fresh(other, tiny_backbone).save_pretrained(tmp_path / other.__name__)
        with pytest.raises(CheckpointError, match="expected"):
            module_class.from_pretrained(directory)

    directory = fresh(module_class, tiny_backbone).save_pretrained(tmp_path / "bad-config")
    record = json.loads((directory / CONFIG_NAME).read_text())
    record["config"] = {"no_such_field": 1}
    (directory / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"config\.json has an invalid .* config"):
        module_class.from_pretrained(directory)
    with pytest.raises(CheckpointError, match=r"missing does not exist\. Pass a checkpoint directory, or the name"):
        module_class.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a comprexit-rag checkpoint"):
        module_class.from_pretrained(tmp_path / "empty")


def test_a_loaded_module_goes_to_the_requested_device(tmp_path, tiny_backbone):
    for module_class in (ComprExITHead, COMIMerger):
        directory = fresh(module_class, tiny_backbone).save_pretrained(tmp_path / module_class.__name__)
        loaded = module_class.from_pretrained(directory, device="cpu")
        assert all(p.device == torch.device("cpu") for p in loaded.parameters())


def test_a_shipped_checkpoint_loads_by_name_and_a_local_directory_of_that_name_wins(
    tmp_path, tiny_backbone, monkeypatch
):
    assert {DEFAULT_HEAD.name, MULTI_RATIO_HEAD.name, DEFAULT_MERGER.name} <= set(packaged_checkpoints())
    by_name = ComprExITHead.from_pretrained(MULTI_RATIO_HEAD.name)
    assert by_name.config.trained_ratios == [4, 8, 16]
    assert by_name.state_dict().keys() == ComprExITHead.from_pretrained(MULTI_RATIO_HEAD).state_dict().keys()

    monkeypatch.chdir(tmp_path)  # a folder named like a shipped checkpoint, here, is what the name means
    fresh(ComprExITHead, tiny_backbone).save_pretrained(tmp_path / MULTI_RATIO_HEAD.name)
    assert ComprExITHead.from_pretrained(MULTI_RATIO_HEAD.name).config.hidden_size == tiny_backbone.hidden_size
    with pytest.raises(CheckpointError, match=f"the name of one shipped with comprexit-rag: .*{DEFAULT_HEAD.name}"):
        ComprExITHead.from_pretrained("comprexit-smollm2-135m-typo")
    assert not (PRETRAINED_DIR / "comprexit-smollm2-135m-typo").exists()


def test_checkpoint_paths_may_be_strings(tmp_path, tiny_backbone):
    directory = fresh(MeanPoolHead, tiny_backbone).save_pretrained(str(tmp_path / "as-string"))
    assert isinstance(directory, Path)
    assert isinstance(MeanPoolHead.from_pretrained(str(directory)), MeanPoolHead)


@pytest.mark.parametrize("module_class", [ComprExITHead, MeanPoolHead, COMIMerger, SoftPrompt])
def test_a_missing_default_checkpoint_says_so(module_class, tmp_path, monkeypatch):
    monkeypatch.setattr(module_class, "default_checkpoint", tmp_path / "not-shipped")
    with pytest.raises(CheckpointError, match=r"No default .* is shipped at .*not-shipped; train one"):
        module_class.from_pretrained()
