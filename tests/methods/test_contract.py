"""The contract every registered method keeps, checked over the whole registry.

A method added with ``register_method`` gets these tests for free: its evaluation builds and reads
a QA example; a bad ratio and an empty text are typed errors; its trained module refuses another
backbone; and it saves and loads back exactly (config, weights, and the fingerprint its slots are
stored under). A method that trains only a reader adapter (``adapter_only``) is checkpointed with one.
"""

from __future__ import annotations

import pytest
import torch

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.errors import BackboneMismatchError, InvalidInputError
from comprexit_rag.evaluation.methods import build_method
from comprexit_rag.methods import MethodSpec, registered_methods
from comprexit_rag.reading.adapter import ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.testing import tiny_llama
from comprexit_rag.training.config import TrainConfig
from comprexit_rag.training.trainer import build_encoder, save_module_and_adapter

METHODS = registered_methods()
EXAMPLE = QAExample(
    "q0",
    "Who founded Town 7?",
    ("Ada7",),
    (Passage("Town 7 lies on the river Rell and was founded by Ada7.", "Town 7"),),
)


def by_name(spec: MethodSpec) -> str:
    return spec.name


def train_config(spec: MethodSpec, output, **options) -> TrainConfig:
    """The smallest valid training config of the method (with the reader adapter it cannot train without)."""
    return TrainConfig(
        method=spec.name, stage=spec.stages[-1], output_dir=str(output), reader_adapter=spec.adapter_only, **options
    )


def fresh_module(spec: MethodSpec, backbone, tmp_path) -> torch.nn.Module:
    """The method's module as a run would start it (through its registered training encoder)."""
    config = train_config(spec, tmp_path / "run")
    torch.manual_seed(0)
    return build_encoder(config, backbone).trainable.eval()


def compressor_of(spec: MethodSpec, backbone, tmp_path):
    if spec.compressor is None:
        pytest.skip(f"{spec.name} gives the reader {spec.context}, made by no compressor")
    return spec.compressor_class()(backbone, fresh_module(spec, backbone, tmp_path))


@pytest.mark.parametrize("spec", METHODS, ids=by_name)
def test_its_evaluation_builds_and_reads_an_example(spec, tiny_backbone, make_tiny_backbone, tmp_path):
    backbone = make_tiny_backbone() if spec.adapter_only else tiny_backbone  # the shared one gets no adapter
    checkpoint = None
    if spec.module is not None:
        checkpoint = tmp_path / "module"
        adapter = None
        if spec.adapter_only:  # made on a copy of the backbone, as a training run would
            adapter = ReaderAdapter.create(make_tiny_backbone(), ReaderAdapterConfig(rank=2))
        save_module_and_adapter(checkpoint, fresh_module(spec, backbone, tmp_path), adapter)
    method = build_method(spec.name, backbone, 4, checkpoint)
    prepared = method.prepare([EXAMPLE])
    assert method.name == spec.name and len(prepared.contexts) == len(prepared.context_vectors) == 1
    assert (prepared.context_vectors[0] == 0) == (spec.context == "none")
    assert (method.reader_adapter is not None) == spec.adapter_only


@pytest.mark.parametrize("spec", METHODS, ids=by_name)
def test_a_bad_ratio_and_an_empty_text_are_refused(spec, tiny_backbone, tmp_path):
    compressor = compressor_of(spec, tiny_backbone, tmp_path)
    query = {"query": "Who?"} if spec.query_aware else {}
    for ratio in (0, -1, 2.0, True, compressor.max_ratio + 1):
        with pytest.raises(InvalidInputError, match="ratio"):
            compressor.compress(["Town 7 lies on a river."], ratio=ratio, **query)
    for text in ("", "   "):
        with pytest.raises(InvalidInputError, match="empty"):
            compressor.compress([text], **query)
    soft = compressor.compress(["Town 7 lies on a river."], ratio=compressor.max_ratio, **query)
    assert soft.num_slots >= 1


@pytest.mark.parametrize("spec", METHODS, ids=by_name)
def test_its_module_refuses_another_backbone(spec, tiny_backbone, default_tokenizer, tmp_path):
    if not spec.trainable:
        pytest.skip(f"{spec.name} has no trained module")
    saved = tmp_path / "module"
    fresh_module(spec, tiny_backbone, tmp_path).save_pretrained(saved)
    other = tiny_llama(default_tokenizer, layers=3)
    config = train_config(spec, tmp_path / "o", init_from=str(saved))
    with pytest.raises(BackboneMismatchError, match="trained for backbone"):
        build_encoder(config, other)
    if spec.compressor is not None:
        with pytest.raises(BackboneMismatchError):
            spec.compressor_class()(other, spec.module_class().from_pretrained(saved))


@pytest.mark.parametrize("spec", METHODS, ids=by_name)
def test_it_saves_and_loads_back_exactly(spec, tiny_backbone, tmp_path):
    if not spec.trainable:
        pytest.skip(f"{spec.name} has no trained module")
    module = fresh_module(spec, tiny_backbone, tmp_path)
    module.save_pretrained(tmp_path / "saved")
    loaded = spec.module_class().from_pretrained(tmp_path / "saved")
    assert loaded.config == module.config and loaded.fingerprint == module.fingerprint
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    if spec.compressor is not None:
        compressor = spec.compressor_class()
        assert compressor(tiny_backbone, loaded).fingerprint == compressor(tiny_backbone, module).fingerprint
