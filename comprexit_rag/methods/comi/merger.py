"""The COMI merger: MIG grouping and merging over the frozen backbone's states, then the trainable projector."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ...backbone import Backbone, BackboneFingerprint, autocast_for
from ...checkpoint import PRETRAINED_DIR, CheckpointConfig, CheckpointedModule
from ...errors import InvalidInputError
from ...validation import check_int_field, check_ratios_field, validate_ratio
from ..projector import SlotProjector
from .merge import mig_merge_batch

CHECKPOINT_KIND = "comi-merger"
DEFAULT_MERGER = PRETRAINED_DIR / "comi-smollm2-135m"
#: How the question follows the passage in the backbone input (tokenised without special tokens).
QUESTION_TEMPLATE = "\nQuestion: {question}"


@dataclass
class COMIConfig(CheckpointConfig):
    """Settings of a :class:`COMIMerger`.

    ``hidden_size`` and ``num_hidden_states`` (L + 1) come from the backbone. ``layer`` is the
    hidden-state index (0 = embedding output, L = last layer) whose states are scored and merged;
    ``None`` means the last one, L: on SmolLM2-135M it was the only layer whose cos(h_i, q)
    ranked answer tokens above chance (``benchmarks/comi_layer_probe.py``, docs/COMI.md; the
    paper uses the 8th layer of a fine-tuned encoder). ``ratio`` is the default compression
    ratio m (``ceil(n / m)`` slots per segment of ``segment_length`` tokens); any ratio up to
    ``max_ratio`` can be used at compression time.
    """

    hidden_size: int
    num_hidden_states: int
    layer: int | None = None
    ratio: int = 4
    segment_length: int = 512
    max_ratio: int = 128
    trained_ratios: list[int] = field(default_factory=lambda: [4])

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_hidden_states", "segment_length", "max_ratio"):
            check_int_field(self, name)
        if self.layer is None:
            self.layer = self.num_hidden_states - 1
        layer = self.layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_hidden_states:
            raise InvalidInputError(
                f"layer must index one of the backbone's {self.num_hidden_states} hidden states "
                f"(0 to {self.num_hidden_states - 1}), got {self.layer}."
            )
        validate_ratio(self.ratio, self.max_ratio)
        check_ratios_field(self, "trained_ratios", self.max_ratio)

    def slots_for(self, num_tokens: int, ratio: int | None = None) -> int:
        """Number of slots produced for a passage of ``num_tokens`` tokens (ceil(n / m) per segment)."""
        ratio = self.ratio if ratio is None else ratio
        full, rest = divmod(num_tokens, self.segment_length)
        return full * -(-self.segment_length // ratio) + -(-rest // ratio)


@dataclass
class QueryBatch:
    """Right-padded ``[BOS] + context + question`` rows for the backbone."""

    items: list[int]  # index of each row in the caller's list of (context, question) pairs
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    context_mask: torch.Tensor  # [B, T] bool: the context tokens (the units COMI merges)
    question_mask: torch.Tensor  # [B, T] bool: the question tokens (averaged into the query vector)


def question_token_ids(backbone: Backbone, questions: Sequence[str]) -> list[list[int]]:
    """Token ids of ``QUESTION_TEMPLATE`` per question (no special tokens); empty for an empty question."""
    ids = backbone.tokenize([QUESTION_TEMPLATE.format(question=q.strip()) for q in questions])
    return [row if question.strip() else [] for row, question in zip(ids, questions, strict=True)]


def iter_query_batches(
    contexts: Sequence[Sequence[int]],
    questions: Sequence[Sequence[int]],
    batch_size: int,
    bos_token_id: int | None,
) -> Iterator[QueryBatch]:
    """Batches of ``[BOS] + context + question`` rows, longest first (to limit padding)."""
    lengths = [len(c) + len(q) for c, q in zip(contexts, questions, strict=True)]
    order = sorted(range(len(contexts)), key=lambda i: lengths[i], reverse=True)
    prefix = [bos_token_id] if bos_token_id is not None else []
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        length = len(prefix) + max(max(lengths[i] for i in chosen), 1)
        input_ids = torch.zeros(len(chosen), length, dtype=torch.long)
        attention_mask = torch.zeros(len(chosen), length, dtype=torch.long)
        context_mask = torch.zeros(len(chosen), length, dtype=torch.bool)
        question_mask = torch.zeros(len(chosen), length, dtype=torch.bool)
        for row, item in enumerate(chosen):
            context, question = list(contexts[item]), list(questions[item])
            ids = prefix + context + question
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            context_mask[row, len(prefix) : len(prefix) + len(context)] = True
            question_mask[row, len(prefix) + len(context) : len(ids)] = True
        yield QueryBatch(chosen, input_ids, attention_mask, context_mask, question_mask)


def read_with_query(backbone: Backbone, batch: QueryBatch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States at ``layer`` [B, T, H] and query vectors [B, H] (float32) for one batch.

    The query vector is the mean of the question tokens' states. A row without question tokens
    (next-token pretraining examples have no question) falls back to the mean of its context
    tokens' states. Runs in the caller's grad mode; the backbone's weights never need gradients.
    """
    states = backbone.hidden_states(batch.input_ids, batch.attention_mask)[layer]
    return states, query_vectors(states, batch.question_mask, batch.context_mask)


def query_vectors(states: torch.Tensor, question_mask: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """[B, H] float32 mean of each row's question states (its context states when it has no question)."""
    question_mask = question_mask.to(states.device)
    context_mask = context_mask.to(states.device)
    has_question = question_mask.any(dim=1, keepdim=True)
    pool = torch.where(has_question, question_mask, context_mask).unsqueeze(-1).float()
    return (states.float() * pool).sum(dim=1) / pool.sum(dim=1).clamp(min=1.0)


class COMIMerger(CheckpointedModule):
    """MIG grouping and merging (no parameters) followed by the trainable :class:`SlotProjector`.

    >>> merger = COMIMerger.for_backbone(backbone)
    >>> slots, slot_mask = merger(layer_states, context_mask, query_vectors, ratio=4)
    """

    checkpoint_kind = CHECKPOINT_KIND
    config_class = COMIConfig
    description = "COMI merger"
    default_checkpoint = DEFAULT_MERGER
    config: COMIConfig

    def __init__(self, config: COMIConfig, fingerprint: BackboneFingerprint) -> None:
        super().__init__(config, fingerprint)
        self.projector = SlotProjector(config.hidden_size)

    @classmethod
    def for_backbone(cls, backbone: Backbone, **config_overrides: Any) -> COMIMerger:
        """A fresh merger sized for ``backbone`` (``config_overrides`` go to :class:`COMIConfig`)."""
        config = COMIConfig(
            hidden_size=backbone.hidden_size, num_hidden_states=backbone.num_hidden_states, **config_overrides
        )
        return cls(config, backbone.fingerprint).to(backbone.device)

    def forward(
        self,
        layer_states: torch.Tensor,
        token_mask: torch.Tensor,
        query_vectors: torch.Tensor,
        ratio: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge each row's masked tokens into ceil(n / m) vectors and project them.

        Args:
            layer_states: [B, T, H] states at ``config.layer``.
            token_mask: [B, T] bool, the context tokens to compress (on the CPU it saves a device sync).
            query_vectors: [B, H] one query vector per row.
            ratio: compression ratio m (default ``config.ratio``).

        Returns:
            slots [B, G, H] float32 in the reader's input-embedding space (G = the largest
            ceil(n_b / m) of the batch) and slot_mask [B, G] bool. Differentiable w.r.t. the projector.
        """
        ratio = validate_ratio(self.config.ratio if ratio is None else ratio, self.config.max_ratio)
        # A mask left on the CPU gives the row lengths without a device sync.
        merged, slot_mask, _ = mig_merge_batch(layer_states, token_mask, query_vectors, ratio)
        # Projecting the padding too (then zeroing it) avoids the sync of a boolean-mask selection.
        projected = self.projector(merged)
        return torch.where(slot_mask.unsqueeze(-1), projected, torch.zeros_like(projected)), slot_mask


def encode_pairs(
    backbone: Backbone,
    merger: COMIMerger,
    contexts: Sequence[Sequence[int]],
    questions: Sequence[Sequence[int]],
    ratio: int,
    batch_size: int,
    show_progress: bool = False,
) -> list[torch.Tensor]:
    """Slots [G_i, H] of every (context segment, question) pair, in input order.

    The backbone runs without gradients; the merger runs in the caller's grad mode.
    """
    results: dict[int, torch.Tensor] = {}
    batches = iter_query_batches(contexts, questions, batch_size, backbone.bos_token_id)
    total = -(-len(contexts) // batch_size)
    for batch in tqdm(batches, total=total, desc="Compressing (COMI)", unit="batch", disable=not show_progress):
        with torch.no_grad():
            states, query = read_with_query(backbone, batch, merger.config.layer)
        with autocast_for(backbone):
            slots, slot_mask = merger(states, batch.context_mask, query, ratio=ratio)
        for row, item in enumerate(batch.items):
            results[item] = slots[row, slot_mask[row]]
    return [results[item] for item in range(len(contexts))]
