"""The method registry: every spec resolves, and the CLI, the trainer and the pipeline read it."""

from __future__ import annotations

import pytest

from comprexit_rag.checkpoint import CheckpointedModule
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods import MethodSpec, get_method, method_names, register_method, registered_methods
from comprexit_rag.methods.base import Compressor


@pytest.mark.parametrize("spec", registered_methods(), ids=lambda spec: spec.name)
def test_every_registered_class_resolves(spec: MethodSpec):
    assert callable(spec.evaluator_class().build)
    if spec.module is not None:
        module = spec.module_class()
        assert issubclass(module, CheckpointedModule) and module.checkpoint_kind and module.config_class
    if spec.trainable:
        assert callable(spec.encoder_class().build)
    if spec.compressor is not None:
        compressor = spec.compressor_class()
        assert compressor.query_aware is spec.query_aware
        assert all(hasattr(compressor, name) for name in ("compress", "fingerprint", "max_ratio", "default_ratio"))
    if spec.context == "slots":
        assert spec.compressor is not None and spec.takes_ratio


def test_the_methods_each_caller_reads():
    assert method_names(trainable=True) == ("comprexit", "mean-pool", "comi", "full-tuned", "full-lora")
    assert method_names(reader_adapter=True) == ("comprexit", "mean-pool", "comi", "full-lora")
    assert method_names(adapter_only=True) == ("full-lora",)
    assert method_names(pipeline=True) == ("comprexit", "comi", "full", "closed-book")
    assert method_names(pipeline=True, context="slots") == ("comprexit", "comi")
    assert set(method_names(takes_ratio=True)) == {"comprexit", "mean-pool", "comi", "truncate"}
    assert [spec.name for spec in registered_methods() if spec.storable] == ["comprexit", "mean-pool"]
    assert get_method("comi").query_aware and not get_method("comi").storable


def test_unknown_and_duplicate_methods_are_refused():
    expected = r"Unknown method 'magic'; expected one of comprexit, comi, full, closed-book\."
    with pytest.raises(InvalidInputError, match=expected):
        get_method("magic", pipeline=True)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_method(MethodSpec(name="comprexit", summary="again", context="none"))
    with pytest.raises(InvalidInputError, match="query-aware"):
        MethodSpec(name="x", summary="x", context="text", query_aware=True)
    with pytest.raises(InvalidInputError, match="needs a module and an encoder"):
        MethodSpec(name="x", summary="x", context="slots", stages=("sft",))
    with pytest.raises(InvalidInputError, match="adapter-only method trains a reader adapter"):
        MethodSpec(
            name="x", summary="x", context="text", module="m:M", encoder="e:E", stages=("sft",), adapter_only=True
        )


def test_compressors_satisfy_the_protocol(tiny_backbone):
    from comprexit_rag.methods.comi import COMICompressor, COMIMerger
    from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
    from comprexit_rag.methods.comprexit.head import ComprExITHead

    slots = ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))
    comi = COMICompressor(tiny_backbone, COMIMerger.for_backbone(tiny_backbone))
    assert isinstance(slots, Compressor) and isinstance(comi, Compressor)
    assert (slots.max_ratio, comi.max_ratio) == (slots.config.window, comi.config.max_ratio)
    assert comi.reader_adapter is None and not slots.query_aware and comi.query_aware
    # A query-independent compressor ignores the question: the same slots with or without one.
    text = ["The river Rell runs through Town 7."]
    assert slots.compress(text, query="Which river?").slots.equal(slots.compress(text).slots)
