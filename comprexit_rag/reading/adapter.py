"""A LoRA on the reader (peft), trained with a slot head and switched on only while the reader reads.

The backbone has two jobs: its frozen forward pass feeds the compression head (so slots never see a
question and are computed once, at indexing), and its forward pass over ``prompt + slots + question``
answers. Only the second one goes through the adapter. The adapter is injected into the backbone's
model with peft and stays disabled except inside :meth:`ReaderAdapter.reading`, which the reader and
the trainer enter while holding the backbone's lock; every other forward pass sees the frozen weights.

Scopes:

``all``
    The adapter applies at every position of the reading pass (prompt, slots, question, answer).
``slots``
    The LoRA delta is applied at slot positions only; text positions keep the frozen weights and
    see the slots through attention. Closed-book and raw-text reading are then exactly the frozen
    reader's.

Reading cost: outside training, an ``all``-scope adapter reads through merged weights (W + BA, one copy
of the adapted layers' weights, made on first use and swapped in for the reading pass only), so a
reading pass costs what the frozen reader's does; the LoRA path's two thin matmuls per layer cost
about 1.4x on a CPU. :attr:`ReaderAdapter.merged_reading` turns the copy off (it holds as many
parameters as the adapted layers: ~106M for SmolLM2-135M, so it is on by default only for float32
weights, where the merge is exact to rounding, and up to :data:`MERGED_READING_MAX_BYTES`).

A saved adapter is a peft checkpoint (``adapter_config.json`` + ``adapter_model.safetensors``, keys
as ``PeftModel.save_pretrained`` writes them) plus ``comprexit_adapter.json`` (scope and backbone
fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from ..backbone import Backbone
from ..checkpoint import (
    check_fingerprint,
    fingerprint_from_metadata,
    load_safetensors,
    read_json_object,
    state_digest,
)
from ..durable import atomic_write, atomic_write_json
from ..errors import CheckpointError, InvalidInputError

logger = logging.getLogger(__name__)

ADAPTER_DIR = "reader_adapter"  # where a head checkpoint keeps its reader adapter
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
METADATA_NAME = "comprexit_adapter.json"
PEFT_KEY_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before the model's own keys
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Largest merged copy of the adapted weights made without being asked (``merged_reading=None``).
MERGED_READING_MAX_BYTES = 1 << 30
Scope = Literal["all", "slots"]
SCOPES: tuple[str, ...] = ("all", "slots")
# The [batch, length, 1] slot mask of each slots-scope adapter's reading pass under way, by id(adapter). Kept
# here rather than on the adapter: its hooks hang off the LoRA layers' nn.Linear modules, and torch.compile
# takes a tensor reached through a built-in module as a fixed-shape constant (dynamo's
# force_nn_module_property_static_shapes), so compiled layers (Backbone.compiled_layers) would recompile for
# each new batch shape. A global's tensors are inputs of any shape.
_SLOT_MASKS: dict[int, torch.Tensor] = {}


@dataclass
class ReaderAdapterConfig:
    """LoRA hyper-parameters of a reader adapter (peft's ``LoraConfig`` is built from these)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_LAYERS))
    scope: Scope = "all"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise InvalidInputError(f"Reader adapter rank must be a positive integer, got {self.rank!r}.")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise InvalidInputError(f"Reader adapter alpha must be positive, got {self.alpha!r}.")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"Reader adapter dropout must lie in [0, 1), got {self.dropout!r}.")
        if not self.target_modules or not all(isinstance(name, str) for name in self.target_modules):
            raise InvalidInputError("Reader adapter target_modules must be a non-empty list of module names.")
        self.target_modules = sorted(self.target_modules)  # one spelling, so equal configs hash alike
        if self.scope not in SCOPES:
            raise InvalidInputError(f"Reader adapter scope must be one of {SCOPES}, got {self.scope!r}.")

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


class ReaderAdapter:
    """A reader LoRA attached to one backbone.

    >>> adapter = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=16))  # fresh, trainable
    >>> adapter.save_pretrained("head/reader_adapter")
    >>> adapter = ReaderAdapter.from_pretrained("head/reader_adapter", backbone)
    >>> with backbone.lock, adapter.reading(slot_mask):  # what Reader does around each forward
    ...     logits = backbone.model(inputs_embeds=...).logits
    """

    def __init__(self, backbone: Backbone, config: ReaderAdapterConfig, name: str) -> None:
        self.backbone = backbone
        self.config = config
        self.name = name
        self.training = False  # whether the weights are trainable (requires_grad), in reading passes and out
        self.paired_head: str | None = None  # digest of the head it was trained with (compressor.head_digest)
        self._slot_mask_as: dict[torch.dtype, torch.Tensor] = {}  # the mask in each dtype a layer computes in
        # True / False: always / never read through merged weights; None: when the copy is small.
        self.merged_reading: bool | None = None
        self._merged: dict[nn.Module, nn.Parameter] | None = None
        self._digest: str | None = None
        self._layers = _inject(backbone, config, name)
        if config.scope == "slots":
            for layer in self._layers:
                layer.lora_B[name].register_forward_hook(self._mask_slot_positions)
        backbone.reader_adapters[name] = self

    @classmethod
    def create(
        cls, backbone: Backbone, config: ReaderAdapterConfig | None = None, name: str | None = None
    ) -> ReaderAdapter:
        """Attach a fresh adapter (LoRA B = 0, so it starts as the frozen reader).

        ``name``: the adapter's name in the backbone's model (peft's adapter name; saved files do not hold
        it). By default the first free one of "reader", "reader-2", ...: one backbone can carry the fresh
        adapters of several training runs in one process.
        """
        if name is None:
            name, count = "reader", 1
            while name in backbone.reader_adapters:
                count += 1
                name = f"reader-{count}"
        elif name in backbone.reader_adapters:
            raise InvalidInputError(f"The backbone already holds a reader adapter named {name!r}; pick another name.")
        adapter = cls(backbone, config or ReaderAdapterConfig(), name)
        for parameter in adapter.parameters():  # fp32 master weights, whatever the backbone's dtype
            parameter.data = parameter.data.float()
        return adapter

    def train(self, mode: bool = True) -> ReaderAdapter:
        """Mark the weights trainable (gradients flow from reading passes) or frozen."""
        self.training = mode
        for parameter in self.parameters():
            parameter.requires_grad_(mode)
        self._digest = None
        self._merged = None
        return self

    def eval(self) -> ReaderAdapter:
        return self.train(False)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, backbone: Backbone) -> ReaderAdapter:
        """Attach a saved adapter to ``backbone``; refuses one trained for another backbone."""
        directory = Path(directory)
        metadata = _read_json(directory / METADATA_NAME)
        check_fingerprint(
            fingerprint_from_metadata(metadata), backbone.fingerprint, f"The reader adapter in {directory}"
        )
        peft_config = _read_json(directory / PEFT_CONFIG_NAME)
        try:
            config = ReaderAdapterConfig(
                rank=peft_config["r"],
                alpha=peft_config["lora_alpha"],
                dropout=peft_config.get("lora_dropout", 0.0),
                target_modules=sorted(peft_config["target_modules"]),
                scope=metadata["scope"],
            )
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{directory} has an invalid reader adapter config: {error}") from error
        state = load_weights(directory)
        # One injected copy per distinct adapter file: loading the same adapter twice reuses it.
        name = "reader-" + hashlib.sha256((directory / PEFT_WEIGHTS_NAME).read_bytes()).hexdigest()[:12]
        existing = backbone.reader_adapters.get(name)
        adapter = existing or cls(backbone, config, name)
        adapter.load_state_dict(state, source=directory)
        adapter.paired_head = metadata.get("paired_head")
        logger.info("Loaded reader adapter %s (%s scope) from %s", name, config.scope, directory)
        return adapter

    @property
    def lora_layers(self) -> list[nn.Module]:
        """The peft LoRA layers that hold this adapter's weights, one per adapted linear layer."""
        return self._layers

    def detach(self) -> None:
        """Remove this adapter's LoRA weights from the backbone's model (the object is unusable after)."""
        for layer in self._layers:
            layer.delete_adapter(self.name)
        self.backbone.reader_adapters.pop(self.name, None)
        _SLOT_MASKS.pop(id(self), None)

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._layers for m in (layer.lora_A, layer.lora_B) for p in m[self.name].parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights under peft's saved keys (``base_model.model....lora_A.weight``)."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.backbone.model, adapter_name=self.name)
        return {PEFT_KEY_PREFIX + key: value for key, value in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str | os.PathLike = "state dict") -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise CheckpointError(
                f"The reader adapter in {source} does not fit this backbone (missing {missing}, unexpected "
                f"{unexpected}); it was saved for another model."
            )
        if any(not torch.isfinite(value).all() for value in state.values()):
            raise CheckpointError(f"The reader adapter in {source} contains NaN or inf values.")
        own = {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in state.items()}
        result = set_peft_model_state_dict(self.backbone.model, own, adapter_name=self.name)
        if result.unexpected_keys:
            raise CheckpointError(
                f"The reader adapter in {source} has keys this model lacks: {result.unexpected_keys[:3]}"
            )
        self._digest = None
        self._merged = None

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load the weights of a saved adapter of the same shape (e.g. to resume training)."""
        self.load_state_dict(load_weights(Path(directory)), source=directory)

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
        """Write the adapter in peft's format, plus its scope and backbone fingerprint.

        ``dtype``: of the saved weights (bfloat16 halves a shipped adapter; loading casts them back to
        the adapter's own dtype). Training checkpoints keep float32 so a run resumes exactly.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {key: value.detach().to(dtype).cpu().contiguous() for key, value in self.state_dict().items()}
        weights = directory / PEFT_WEIGHTS_NAME
        atomic_write(weights, lambda path: save_file(tensors, str(path), metadata={"format": "pt"}))
        lora = self.config.lora_config()
        lora.base_model_name_or_path = self.backbone.name
        lora.save_pretrained(str(directory))
        metadata = {
            "scope": self.config.scope,
            "paired_head": self.paired_head,
            "backbone_fingerprint": asdict(self.backbone.fingerprint),
        }
        atomic_write_json(directory / METADATA_NAME, metadata)
        return directory

    @property
    def digest(self) -> str:
        """A hash of the weights and config: the mark on the slots read through it, which the reader checks. Call
        :meth:`refresh_digest` after changing the weights in place (training)."""
        if self._digest is None:
            self._digest = state_digest(asdict(self.config), self.state_dict())
        return self._digest

    def refresh_digest(self) -> None:
        """Forget what was derived from the weights (digest, merged copy) after changing them in place."""
        self._digest = None
        self._merged = None

    @contextlib.contextmanager
    def reading(self, slot_mask: torch.Tensor | None = None) -> Iterator[None]:
        """Switch the adapter on for the forward passes inside; hold the backbone's lock around it.

        ``slot_mask`` ([batch, length], true at slot positions) is needed by the ``slots`` scope for
        a pass over a whole prompt. Without it a ``slots``-scope adapter stays off: the positions such
        a pass computes (decoding steps) are text.
        """
        if self.config.scope == "slots" and slot_mask is None:
            yield
            return
        if self._reads_merged():
            with self._merged_weights():
                yield
            return
        self._slot_mask = slot_mask[..., None] if slot_mask is not None else None
        self._slot_mask_as = {}
        # Under autocast the LoRA matmuls run in the low dtype whatever their input's: peft's cast of each
        # layer's input to the float32 adapter weights (what peft.helpers.disable_input_dtype_casting
        # switches) would only copy the activations there and back, a quarter of a GPU training step.
        cast_inputs = not torch.is_autocast_enabled(self.backbone.device.type)
        switched = False
        for layer in self._layers:
            if layer.active_adapters != [self.name]:  # another adapter of this backbone read last
                layer.set_adapter(self.name)  # peft also sets requires_grad on the adapters' weights
                switched = True
            _enable(layer, True)
            layer.cast_input_dtype_enabled = cast_inputs
        if switched:  # give every adapter of the backbone its own requires_grad back
            for adapter in self.backbone.reader_adapters.values():
                for parameter in adapter.parameters():
                    parameter.requires_grad_(adapter.training)
        try:
            yield
        finally:
            for layer in self._layers:
                _enable(layer, False)
            self._slot_mask = None
            self._slot_mask_as = {}

    @property
    def _slot_mask(self) -> torch.Tensor | None:
        return _SLOT_MASKS.get(id(self))

    @_slot_mask.setter
    def _slot_mask(self, mask: torch.Tensor | None) -> None:
        if mask is None:
            _SLOT_MASKS.pop(id(self), None)
        else:
            _SLOT_MASKS[id(self)] = mask

    def _reads_merged(self) -> bool:
        if self.training or self.config.scope != "all":
            return False  # training needs the LoRA path's gradients; a slots-scope delta depends on position
        if self.merged_reading is not None:
            return self.merged_reading
        weights = [layer.base_layer.weight for layer in self._layers]
        # Only in float32: rounding W + BA to bfloat16 would lose much of a small delta.
        small = sum(w.nbytes for w in weights) <= MERGED_READING_MAX_BYTES
        return small and all(w.dtype == torch.float32 for w in weights)

    @contextlib.contextmanager
    def _merged_weights(self) -> Iterator[None]:
        """Swap each adapted layer's weight for W + BA (adapters stay off) for the passes inside."""
        if self._merged is None:
            with torch.no_grad():
                self._merged = {
                    layer: nn.Parameter(
                        (layer.base_layer.weight.float() + layer.get_delta_weight(self.name).float()).to(
                            layer.base_layer.weight.dtype
                        ),
                        requires_grad=False,
                    )
                    for layer in self._layers
                }
        frozen = {layer: layer.base_layer.weight for layer in self._layers}
        for layer, merged in self._merged.items():
            layer.base_layer.weight = merged
        try:
            yield
        finally:
            for layer, weight in frozen.items():
                layer.base_layer.weight = weight

    def _mask_slot_positions(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        mask = self._slot_mask
        if mask is None:  # a slots-scope adapter is on only with a mask (see reading())
            return output * 0
        if mask.shape[:2] != output.shape[:2]:
            raise InvalidInputError(
                f"The slot mask covers {tuple(mask.shape[:2])} positions but the pass computes "
                f"{tuple(output.shape[:2])}."
            )
        if torch.compiler.is_compiling():  # fused into the compiled kernels; the cache would only add guards
            return output * mask.to(output.dtype)
        cast = self._slot_mask_as.get(output.dtype)
        if cast is None:  # converted once per pass, not once per adapted layer
            cast = self._slot_mask_as[output.dtype] = mask.to(output.dtype)
        return output * cast


def _inject(backbone: Backbone, config: ReaderAdapterConfig, name: str) -> list[nn.Module]:
    """Inject LoRA layers named ``name`` into the backbone's model and leave them disabled."""
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    try:
        inject_adapter_in_model(config.lora_config(), backbone.model, adapter_name=name)
    except ValueError as error:  # e.g. target modules that this architecture does not have
        raise InvalidInputError(f"Cannot attach a reader adapter to {backbone.name}: {error}") from error
    layers = [module for module in backbone.model.modules() if isinstance(module, LoraLayer) and name in module.lora_A]
    for layer in layers:
        layer.enable_adapters(False)
    return layers


def _enable(layer: nn.Module, enabled: bool) -> None:
    """Switch a LoRA layer's adapters on or off, keeping the weights' requires_grad as they are.

    peft's ``enable_adapters`` sets the flag its forward reads and also walks every adapter weight of
    the layer to set requires_grad (twice when switching on): for SmolLM2's 210 adapted layers that
    took 37 ms of host time per reading pass, which a training step then had to undo.
    """
    layer._disable_adapters = not enabled


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"No {path.name} in {path.parent}: not a reader adapter directory (a head trained with a reader adapter "
            f"keeps it in {ADAPTER_DIR}/ beside its config.json)."
        )
    return read_json_object(path, "a reader adapter file", "re-save or re-download the adapter")


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    missing = f"No {PEFT_WEIGHTS_NAME} in {directory}; re-save or re-download the adapter."
    return load_safetensors(directory / PEFT_WEIGHTS_NAME, missing)


__all__ = ["ADAPTER_DIR", "SCOPES", "ReaderAdapter", "ReaderAdapterConfig"]
