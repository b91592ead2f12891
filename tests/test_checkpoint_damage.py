"""Truncated, corrupt or foreign checkpoints (heads, COMI mergers) are CheckpointErrors that say what to do."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"


import pytest

from comprexit_rag import (
    CheckpointError,
    ComprExITHead,
)
from comprexit_rag.methods.comi import COMIMerger
from comprexit_rag.testing import damage_checkpoint

DAMAGES = {
    "truncated": "truncated or corrupt",
    "empty": "truncated or corrupt",
    "garbage header": "truncated or corrupt",
    "missing weights": "No model.safetensors",
    "wrong tensors": "do not fit",
    "nan weights": "NaN or inf",
    "config not json": "not valid JSON",
    "config of another kind": "expected",
}


@pytest.mark.parametrize("kind", ["head", "comi-merger"])
@pytest.mark.parametrize("how", list(DAMAGES))
def test_corrupt_checkpoints_are_checkpoint_errors(tiny_backbone, tmp_path, kind, how):
    module_class = ComprExITHead if kind == "head" else COMIMerger
    module = module_class.for_backbone(tiny_backbone)
    directory = module.save_pretrained(tmp_path / kind)
    damage_checkpoint(directory, how)
    with pytest.raises(CheckpointError, match=DAMAGES[how]):
        module_class.from_pretrained(directory)
