"""benchmarks/gpu/architecture_twin.py: the default backbone's shapes and tokens, none of its weights."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from comprexit_rag.backbone import Backbone
from comprexit_rag.default_model import default_backbone_dir

ROOT = Path(__file__).resolve().parents[1]


def test_twin_has_the_default_architecture_and_tokenizer_and_other_weights(tmp_path: Path) -> None:
    default = Path(default_backbone_dir())
    files = tmp_path / "files"
    files.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(default / name, files / name)
    twin_dir = tmp_path / "twin"
    script = ROOT / "benchmarks/gpu/architecture_twin.py"
    subprocess.run([sys.executable, str(script), "--source", str(files), "--out", str(twin_dir)], check=True)

    twin = Backbone.from_pretrained(str(twin_dir), device="cpu")
    # A copy of its own: the session's shared real backbone may carry other tests' reader adapters, which
    # rename its parameters.
    real = Backbone.from_pretrained(None, device="cpu")
    twin_shapes = {name: tuple(p.shape) for name, p in twin.model.named_parameters()}
    assert twin_shapes == {name: tuple(p.shape) for name, p in real.model.named_parameters()}
    text = "The Eiffel Tower was completed in 1889."
    assert twin.tokenizer(text)["input_ids"] == real.tokenizer(text)["input_ids"]

    name = "model.embed_tokens.weight"
    with safe_open(twin_dir / "model.safetensors", "pt") as weights:
        twin_embedding = weights.get_tensor(name).float()
    real_embedding = dict(real.model.named_parameters())[name].detach().float()
    assert not torch.allclose(twin_embedding, real_embedding, atol=1e-3)
