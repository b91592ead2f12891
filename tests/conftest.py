"""Shared fixtures: a tiny random Llama for fast shape tests, and the real default backbone (slow)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from comprexit_rag import Backbone
from comprexit_rag.default_model import default_backbone_dir


@pytest.fixture(scope="session")
def default_tokenizer():
    """The real SmolLM2 tokenizer (from the converted default backbone in the user cache)."""
    return AutoTokenizer.from_pretrained(default_backbone_dir())


def build_tiny_backbone(tokenizer, seed: int = 0) -> Backbone:
    """A randomly initialised 2-layer Llama with the real tokenizer: fast, deterministic shapes."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    return Backbone(model, tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_backbone(default_tokenizer) -> Backbone:
    """The shared tiny backbone (never give it a reader adapter: use ``fresh_tiny_backbone``)."""
    return build_tiny_backbone(default_tokenizer)


@pytest.fixture
def make_tiny_backbone(default_tokenizer):
    """Builds tiny backbones of the test's own (same weights as ``tiny_backbone``), e.g. to attach adapters to."""
    return lambda: build_tiny_backbone(default_tokenizer)


@pytest.fixture
def fresh_tiny_backbone(make_tiny_backbone) -> Backbone:
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def real_backbone() -> Backbone:
    """The embedded default SmolLM2-135M-Instruct on CPU (fp32), the process's shared default copy."""
    from comprexit_rag.defaults import default_backbone

    return default_backbone("cpu")
