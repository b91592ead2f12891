"""A copy of the reader to serve (e.g. with vLLM): the backbone with its reader adapter merged in.

vLLM reads stored slots as prompt embeddings (``vllm_inputs.py``). A head trained with a reader
adapter must be read through that adapter. The adapter cannot be merged into the backbone the
library keeps in memory (the compression pass needs the frozen weights), but a served reader only
reads: this writes a standalone copy of the backbone with an ``all``-scope adapter merged into its
linear layers (peft's ``merge_and_unload``), which ``vllm serve DIR --enable-prompt-embeds`` loads as
any Hugging Face model. The input embedding table is not adapted, so prompt embeddings built from
the frozen backbone (:func:`~comprexit_rag.scale.vllm_inputs.prompt_embeds`) are the served model's.

A ``slots``-scope adapter applies its delta at slot positions only, which no merged weight can
express: it is refused.

>>> compressor = ComprExITCompressor.from_pretrained()
>>> export_served_reader(compressor, "served-reader")  # then: vllm serve served-reader --enable-prompt-embeds
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path

from ..backbone import Backbone
from ..errors import InvalidInputError
from ..reading.adapter import ReaderAdapter

logger = logging.getLogger(__name__)


def export_served_reader(source: ReaderAdapter | object, directory: str | os.PathLike) -> Path:
    """Write the backbone with the reader adapter merged (safetensors + tokenizer) to ``directory``.

    ``source``: a :class:`ReaderAdapter`, or anything with a ``reader_adapter`` (a compressor).
    """
    adapter = source if isinstance(source, ReaderAdapter) else getattr(source, "reader_adapter", None)
    if adapter is None:
        raise InvalidInputError(
            "This head has no reader adapter: serve the backbone itself (vllm serve <backbone> --enable-prompt-embeds)."
        )
    if adapter.config.scope != "all":
        raise InvalidInputError(
            f"A {adapter.config.scope!r}-scope reader adapter changes slot positions only and cannot be merged into "
            "served weights; serve it with the library's Reader, or train an 'all'-scope adapter."
        )
    return _merge(adapter.backbone, adapter, Path(directory))


def _merge(backbone: Backbone, adapter: ReaderAdapter, directory: Path) -> Path:
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as saved:
        adapter.save_pretrained(saved)
        with backbone.lock:
            # A copy with no adapter layers: the library's backbone keeps its frozen weights.
            plain = copy.deepcopy(backbone.model)
        for name in list(backbone.reader_adapters):
            _remove_adapter_layers(plain, name)
        merged = PeftModel.from_pretrained(plain, saved).merge_and_unload()
    directory.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(directory)
    backbone.tokenizer.save_pretrained(directory)
    logger.info("Wrote %s with reader adapter %s merged to %s", backbone.name, adapter.name, directory)
    return directory


def _remove_adapter_layers(model, name: str) -> None:
    """Unwrap the LoRA layers named ``name`` that the library injected (without merging them)."""
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer) and name in child.lora_A:
                setattr(parent, child_name, child.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
