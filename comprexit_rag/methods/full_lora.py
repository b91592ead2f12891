"""The ``full-lora`` baseline: the raw passages, read through a reader adapter trained for them.

Nothing is compressed and nothing is placed before the passages: the method's only trained weights
are a reader adapter (:class:`~comprexit_rag.reading.adapter.ReaderAdapter`, a peft LoRA), the same
budget a ComprExIT head's reader gets, trained on the same QA data, steps and seed. It is what a head
read through its adapter is measured against (issue #19: ComprExIT >= 0.95x full-lora), next to the
prompt-tuned frozen reader ``full-tuned``.

Its checkpoint has the layout of every trained method, so the trainer, resuming and loading treat it
like any other: ``config.json`` (kind ``full-lora``, the backbone fingerprint, the training summary),
a ``model.safetensors`` that holds no tensors (:class:`FullLoRA` has no weights of its own), and the
adapter in ``reader_adapter/``. :meth:`FullLoRA.load_reader_adapter` reads the pair back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..backbone import Backbone
from ..checkpoint import PRETRAINED_DIR, CheckpointConfig, CheckpointedModule, check_fingerprint
from ..errors import AdapterMismatchError, CheckpointError
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter
from .base import head_digest

__all__ = ["CHECKPOINT_KIND", "FullLoRA", "FullLoRAConfig"]

CHECKPOINT_KIND = "full-lora"
DEFAULT_FULL_LORA = PRETRAINED_DIR / "full-lora-smollm2-135m"  # none is shipped: train one


@dataclass
class FullLoRAConfig(CheckpointConfig):
    """No options: the passages are read as they are, joined by a blank line."""


class FullLoRA(CheckpointedModule):
    """The ``full-lora`` method's module: no weights; the reader adapter saved beside it is what trained."""

    checkpoint_kind = CHECKPOINT_KIND
    config_class = FullLoRAConfig
    description = "full-lora checkpoint"
    default_checkpoint = DEFAULT_FULL_LORA

    config: FullLoRAConfig

    @classmethod
    def for_backbone(cls, backbone: Backbone) -> FullLoRA:
        return cls(FullLoRAConfig(), backbone.fingerprint)

    @classmethod
    def load_reader_adapter(cls, directory: str | os.PathLike | None, backbone: Backbone) -> ReaderAdapter:
        """The reader adapter of the full-lora checkpoint in ``directory``, attached to ``backbone``.

        Refuses a checkpoint of another kind or backbone, one without ``reader_adapter/``, and an adapter
        that was trained with another module (a head's adapter copied in).
        """
        module = cls.from_pretrained(directory)
        directory = Path(directory) if directory is not None else cls.default_checkpoint
        check_fingerprint(module.fingerprint, backbone.fingerprint, f"The {cls.description} in {directory}")
        if not (directory / ADAPTER_DIR).is_dir():
            raise CheckpointError(
                f"{directory} has no {ADAPTER_DIR}/: a {cls.description} is config.json, model.safetensors and the "
                "reader adapter it trained. Pass the final/ directory of a `comprexit-rag train --method full-lora` "
                "run."
            )
        adapter = ReaderAdapter.from_pretrained(directory / ADAPTER_DIR, backbone)
        if adapter.paired_head is not None and adapter.paired_head != head_digest(module):
            raise AdapterMismatchError(
                f"The reader adapter in {directory / ADAPTER_DIR} was trained with module {adapter.paired_head}, not "
                f"with this {cls.description}; copy the whole final/ directory of one run."
            )
        return adapter
