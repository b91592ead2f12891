"""A frozen Hugging Face causal LM that both encodes passages and reads soft slots."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Cache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from .default_model import DEFAULT_BACKBONE_NAME, default_backbone_dir
from .errors import InvalidInputError
from .layout import to_device
from .threads import apply_thread_policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BackboneFingerprint:
    """What a trained head depends on: shapes, layer count, the exact vocabulary and the weights.

    ``weights_sha256`` (see :func:`weights_sha256`) tells apart backbones of one architecture and
    tokenizer (instruct or base, a fine-tune, random weights). Checkpoints saved before it existed
    lack it (``None``); two fingerprints are then compared on the other fields only, so those
    checkpoints keep loading.
    """

    architecture: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    tokenizer_sha256: str
    weights_sha256: str | None = None

    def _layout(self) -> tuple[str, int, int, int, str]:
        return (self.architecture, self.hidden_size, self.num_hidden_layers, self.vocab_size, self.tokenizer_sha256)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackboneFingerprint):
            return NotImplemented
        weights = self.weights_sha256 is None or other.weights_sha256 is None
        return self._layout() == other._layout() and (weights or self.weights_sha256 == other.weights_sha256)

    def __hash__(self) -> int:
        return hash(self._layout())

    def to_dict(self) -> dict[str, str | int]:
        """The fields as saved in a checkpoint's ``config.json`` (``weights_sha256`` only when known)."""
        fields = asdict(self)
        if fields["weights_sha256"] is None:
            del fields["weights_sha256"]
        return fields

    @property
    def digest(self) -> str:
        """Short hash of every field: it names the backbone in ``pipeline.json`` and slot-store keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def layout_digest(self) -> str:
        """The digest without the weights: what pipelines saved before ``weights_sha256`` recorded."""
        return dataclasses.replace(self, weights_sha256=None).digest

    def describe(self) -> str:
        weights = f", weights {self.weights_sha256[:12]}" if self.weights_sha256 else ""
        return (
            f"{self.architecture} (hidden {self.hidden_size}, {self.num_hidden_layers} layers, "
            f"vocab {self.vocab_size}, tokenizer {self.tokenizer_sha256[:12]}{weights})"
        )


#: Values hashed per weight tensor by :func:`weights_sha256`.
WEIGHT_SAMPLE = 4096


@torch.no_grad()
def weights_sha256(model: nn.Module) -> str:
    """Hash of a fixed sample of every parameter of ``model``: its shape and WEIGHT_SAMPLE values.

    The values sit at evenly spaced positions (integer arithmetic: the same on every device) and
    are rounded to bfloat16 before hashing, so one checkpoint loaded in float32 or bfloat16, on
    CPU or GPU, hashes alike, while a fine-tune or other weights do not. A sample keeps the cost
    at milliseconds, so the hash is computed on load, never cached.
    """
    digest = hashlib.sha256()
    for parameter in model.parameters():  # tied weights are yielded once
        flat = parameter.detach().reshape(-1)
        if flat.numel() > WEIGHT_SAMPLE:
            positions = torch.arange(WEIGHT_SAMPLE, dtype=torch.int64) * (flat.numel() - 1) // (WEIGHT_SAMPLE - 1)
            flat = flat[positions.to(flat.device)]
        sample = flat.to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
        digest.update(repr(tuple(parameter.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 matmuls are ~5x slower than fp32 on CPU; on GPUs bf16 is the natural choice.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast_for(backbone: Backbone) -> contextlib.AbstractContextManager:
    """Run trainable modules in the backbone's low precision where it has one."""
    if backbone.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=backbone.device.type, dtype=backbone.dtype)
    return contextlib.nullcontext()


def encode_text(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of user-provided texts (passages, questions, contexts), without added special tokens.

    Special-token strings in the text (``"<|im_end|>"``, ``"<|endoftext|>"``...) are split into
    ordinary text tokens (``split_special_tokens=True``), so a passage or a question cannot inject
    chat-structure tokens into the prompt. Text without such strings gets exactly the ids of a
    plain ``tokenizer(texts, add_special_tokens=False)``. Fast tokenizers switch a shared setting
    for this call: hold the backbone's :attr:`Backbone.lock` when the tokenizer is shared.
    """
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def cache_keyword(model: nn.Module) -> str:
    """The keyword that passes a KV cache to ``model.forward``: recent transformers renamed
    ``past_key_values`` to ``cache``, in arguments and outputs (the old name is deprecated there)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output: ModelOutput) -> Cache:
    """The KV cache a forward pass with ``use_cache=True`` returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


class Backbone:
    """A frozen causal LM with its tokenizer.

    Use :meth:`from_pretrained` with no argument for the embedded SmolLM2-135M-Instruct, or
    pass any Hugging Face causal-LM name or local path (Llama, Qwen, SmolLM, ...).

    Thread safety: one backbone is shared by the compressor, the reader and COMI, possibly from
    several threads (a web server answering concurrent questions). Every forward pass of the
    model and every tokenizer call made through this library holds :attr:`lock`, so concurrent
    callers get exactly the results of sequential calls. Hugging Face models are not promised to
    be thread-safe (fast tokenizers raise "Already borrowed" when their padding or truncation
    settings change under another thread; rotary embeddings of the dynamic and long-rope kinds
    update shared buffers in the forward pass). A CPU forward already uses every core, so
    serialising forwards costs little; on a GPU, batch questions instead of using threads.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "") -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.lock = threading.RLock()  # held around every forward pass and tokenizer call
        # Reader adapters injected into the model (see adapter.py); off except while a reader reads.
        self.reader_adapters: dict[str, Any] = {}
        apply_thread_policy()  # CPU threads that stay fast when other processes compete (comprexit_rag.threads)
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name or model.config.name_or_path
        self.fingerprint = BackboneFingerprint(
            architecture=model.config.architectures[0] if model.config.architectures else type(model).__name__,
            hidden_size=model.config.hidden_size,
            num_hidden_layers=model.config.num_hidden_layers,
            vocab_size=model.config.vocab_size,
            tokenizer_sha256=tokenizer_sha256(tokenizer),
            weights_sha256=weights_sha256(model),
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> Backbone:
        """Load a frozen backbone; ``None`` means the embedded default (converted once, cached)."""
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        if name_or_path is None:
            source, name = default_backbone_dir(), DEFAULT_BACKBONE_NAME
        else:
            source, name = name_or_path, str(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        logger.info("Loaded backbone %s on %s (%s)", name, device, dtype)
        return cls(model.to(device), tokenizer, name=name)

    @classmethod
    def resolve(cls, backbone: str | Path | Backbone | None, device: str | torch.device | None = None) -> Backbone:
        """``backbone`` itself if it is loaded, else :meth:`from_pretrained` of it (``None``: the embedded default)."""
        return backbone if isinstance(backbone, Backbone) else cls.from_pretrained(backbone, device=device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    @property
    def num_hidden_states(self) -> int:
        """L + 1: the embedding output plus one state per layer."""
        return self.fingerprint.num_hidden_layers + 1

    @property
    def max_positions(self) -> int | None:
        """Longest sequence (prompt + context + answer) the model reads, or ``None`` if unknown."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.input_embeddings(input_ids.to(self.device))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of user texts, no special tokens added (callers add BOS where the format needs it).

        Special-token strings inside the texts are read as ordinary text (see :func:`encode_text`).
        """
        with self.lock:
            return encode_text(self.tokenizer, texts)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All L+1 hidden states, each [batch, length, hidden], for right-padded inputs (host tensors are
        sent without waiting for the device)."""
        with self.lock:
            device = self.device
            outputs = self.model.base_model(
                input_ids=to_device(input_ids, device),
                attention_mask=to_device(attention_mask, device),
                output_hidden_states=True,
                use_cache=False,
            )
        return outputs.hidden_states

    @contextlib.contextmanager
    def compiled_layers(self, backend: str = "inductor") -> Iterator[None]:
        """The decoder layers compiled with ``torch.compile`` for the forward passes inside; eager again after.

        Regional compilation: the layers share their code and their weights are inputs of the compiled
        graphs, so the graphs compiled for the first layer serve every layer, and compiling costs one
        layer's time, not the model's. Within them the elementwise work (norms, rotary, SwiGLU, the LoRA
        delta's scaling and sum) is fused. Shapes are dynamic from the first call, so batches of other
        sizes and lengths reuse the graphs; a graph is compiled for each grad mode and state of the reader
        adapter (the frozen pass that feeds a head, the reading pass, a no-grad reading pass) and for
        attention with and without a padding mask: ten for a distilled step, compiled in its first steps.

        The compiled regions are the layers' blocks (attention, MLP, norms), not whole layers: transformers
        hooks the attention block to capture its weights (``output_attentions``), and the hook reads a
        ContextVar, which dynamo cannot trace; a block's ``forward`` runs inside its hooks.
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [module for module in self.model.modules() if isinstance(module, GradientCheckpointingLayer)]
        if not layers:
            raise InvalidInputError(f"{self.name} has no decoder layers (GradientCheckpointingLayer) to compile.")
        blocks = [block for layer in layers for block in layer.children()]
        for block in blocks:  # an attribute of the instance, shadowing the class's forward until deleted
            block.forward = torch.compile(block.forward, dynamic=True, backend=backend)
        logger.info("Compiling the blocks of %d decoder layers of %s (%s)", len(layers), self.name, backend)
        try:
            yield
        finally:
            for block in blocks:
                del block.forward

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
