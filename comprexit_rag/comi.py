"""COMI: query-aware compression by Marginal Information Gain (MIG), the project's query-aware baseline.

COMI (METHOD.md section 2) reads the passage *and* the question with the frozen backbone, then

1. coarse stage: starts from ``G = ceil(n / m)`` contiguous near-equal groups of context tokens,
   scores each group by ``MIG = relevance - redundancy`` and reallocates the group sizes to
   ``n * softmax(-MIG)`` (contiguous, ``G`` fixed), so valuable groups are compressed less;
2. fine stage: merges each group into one vector, weighting its tokens by a softmax over the
   group of ``cos(h_i, q) - max_{j != i in group} cos(h_i, h_j)``.

The merged vectors go through the same :class:`~comprexit_rag.projector.SlotProjector` as
ComprExIT (the only trainable part here; the backbone stays frozen). Because the question is
read together with the passage, COMI slots must be computed per question: they cannot be stored
at indexing time like ComprExIT slots.

Departures from the paper: the backbone is frozen (no encoder fine-tuning, no decoder LoRA) and
the alignment block is the ComprExIT projector, so both methods train the same parameters on the
same budget. ``docs/COMI.md`` records how the default layer was chosen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from .backbone import Backbone, BackboneFingerprint
from .checkpoint import CheckpointConfig, CheckpointedModule, check_fingerprint
from .compressor import autocast_for
from .errors import InvalidInputError
from .head import PRETRAINED_DIR
from .projector import SlotProjector
from .segments import Segment, split_into_segments
from .soft_context import SoftContext
from .validation import check_int_field, check_ratios_field, check_texts, validate_ratio

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


# ---------------------------------------------------------------------------------------------
# Pure functions: grouping, MIG, reallocation and merging of one sequence's token states.
# ---------------------------------------------------------------------------------------------


def num_groups(num_tokens: int, ratio: int) -> int:
    """G = ceil(n / m): the number of groups (and slots) for ``num_tokens`` tokens."""
    return -(-num_tokens // ratio)


def near_equal_sizes(num_tokens: int, groups: int, device: torch.device | None = None) -> torch.Tensor:
    """Sizes of ``groups`` contiguous groups covering ``num_tokens`` tokens, differing by at most 1."""
    if groups < 1 or num_tokens < groups:
        raise InvalidInputError(f"Cannot split {num_tokens} tokens into {groups} non-empty groups.")
    base, extra = divmod(num_tokens, groups)
    sizes = torch.full((groups,), base, dtype=torch.long, device=device)
    sizes[:extra] += 1
    return sizes


def group_index(group_sizes: torch.Tensor) -> torch.Tensor:
    """The group of every token, [n], for contiguous groups of the given sizes [G]."""
    groups = torch.arange(group_sizes.numel(), device=group_sizes.device)
    return torch.repeat_interleave(groups, group_sizes)


def allocate_group_sizes(mig: torch.Tensor, n: int) -> torch.Tensor:
    """Integer group sizes proportional to ``n * softmax(-mig)``: higher MIG -> fewer tokens.

    Every group keeps at least one token and the sizes sum to ``n``; the number of groups
    ``G = len(mig)`` never changes. Groups whose share falls below one token are pinned to one
    token and the rest is shared among the others in the same proportions (water-filling); the
    shares are then rounded by largest remainder (ties go to the lower MIG, then the earlier group). Sizes are
    monotone: a group with a higher MIG never receives more tokens than one with a lower MIG.

    Args:
        mig: [G] marginal information gain (or any relevance score) of each group.
        n: total number of tokens, at least G.

    Returns:
        [G] long tensor on ``mig``'s device.
    """
    groups = mig.numel()
    if mig.dim() != 1 or groups < 1:
        raise InvalidInputError(f"mig must be a non-empty 1-D tensor, got shape {tuple(mig.shape)}.")
    if n < groups:
        raise InvalidInputError(f"Cannot give {groups} groups at least one token each out of {n} tokens.")
    if not bool(torch.isfinite(mig).all()):
        raise InvalidInputError("mig holds NaN or inf; check the hidden states and query vectors fed to COMI.")
    share = torch.softmax(-mig.detach().double().cpu(), dim=0)
    pinned = torch.zeros(groups, dtype=torch.bool)
    while True:
        free_share = share[~pinned].sum()
        quota = torch.where(pinned, torch.ones_like(share), (n - int(pinned.sum())) * share / free_share)
        newly_pinned = ~pinned & (quota < 1)
        if not newly_pinned.any():
            break
        pinned |= newly_pinned
    sizes = quota.floor().long().clamp(min=1)
    # The quotas sum to n, so the floors fall short by the (integer) sum of the remainders. Equal
    # remainders go to the lower MIG first (then the earlier group), which keeps sizes monotone.
    missing = n - int(sizes.sum())
    by_mig = torch.argsort(mig.detach().double().cpu(), stable=True)
    remainder = (quota - quota.floor())[by_mig]
    order = by_mig[torch.argsort(remainder, descending=True, stable=True)]
    sizes[order[:missing]] += 1
    return sizes.to(mig.device)


def group_mig(token_states: torch.Tensor, query: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """Coarse stage: the Marginal Information Gain of every contiguous group, [G].

    relevance_g = max_{i in g} cos(h_i, q); the argmax token is the group's representative;
    redundancy_g = max over the other groups' representatives r of cos(rep_g, r) (0 when G = 1);
    MIG_g = relevance_g - redundancy_g.

    Args:
        token_states: [n, H] states of the context tokens.
        query: [H] query vector.
        group_sizes: [G] sizes of contiguous groups, summing to n.
    """
    units = F.normalize(token_states.float(), dim=-1)
    relevance_per_token = units @ F.normalize(query.float(), dim=-1)
    owner = _checked_group_index(group_sizes, token_states.shape[0])
    groups = group_sizes.numel()
    relevance = _segment_max(relevance_per_token, owner, groups)
    # Representative: the first token of the group that reaches the group's maximum relevance.
    positions = torch.arange(owner.numel(), device=owner.device)
    candidates = torch.where(relevance_per_token == relevance[owner], positions, owner.numel())
    representative = torch.full((groups,), owner.numel(), device=owner.device, dtype=torch.long)
    representative = representative.scatter_reduce(0, owner, candidates, reduce="amin")
    if groups == 1:
        return relevance
    reps = units[representative]
    similarity = (reps @ reps.T).fill_diagonal_(float("-inf"))
    return relevance - similarity.max(dim=1).values


def merge_weights(token_states: torch.Tensor, query: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """Fine stage: per-token merge weights [n], a softmax within each contiguous group.

    score_i = cos(h_i, q) - max_{j != i in the same group} cos(h_i, h_j); a token alone in its
    group gets weight 1. Weights sum to 1 within every group.
    """
    units = F.normalize(token_states.float(), dim=-1)
    relevance = units @ F.normalize(query.float(), dim=-1)
    owner = _checked_group_index(group_sizes, token_states.shape[0])
    same_group = owner.unsqueeze(0) == owner.unsqueeze(1)
    same_group.fill_diagonal_(False)
    similarity = (units @ units.T).masked_fill(~same_group, float("-inf"))
    redundancy = similarity.max(dim=1).values
    redundancy = torch.where(same_group.any(dim=1), redundancy, torch.zeros_like(redundancy))
    score = relevance - redundancy
    groups = group_sizes.numel()
    exp = torch.exp(score - _segment_max(score, owner, groups)[owner])
    total = torch.zeros(groups, dtype=exp.dtype, device=exp.device).index_add(0, owner, exp)
    return exp / total[owner]


def mig_merge(states: torch.Tensor, query: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """COMI on one sequence: coarse group reallocation by MIG, then fine in-group merging.

    Args:
        states: [n, H] context token states (any float dtype; computed in float32).
        query: [H] query vector.
        ratio: target compression ratio m; the output has G = ceil(n / m) vectors.

    Returns:
        merged [G, H] float32, group sizes [G] (contiguous, summing to n) and merge weights [n].
    """
    num_tokens, hidden = states.shape
    if num_tokens == 0:
        empty = torch.zeros(0, dtype=torch.long, device=states.device)
        return states.new_zeros(0, hidden, dtype=torch.float32), empty, states.new_zeros(0, dtype=torch.float32)
    with torch.autocast(device_type=states.device.type, enabled=False):
        initial = near_equal_sizes(num_tokens, num_groups(num_tokens, ratio), device=states.device)
        sizes = allocate_group_sizes(group_mig(states, query, initial), num_tokens)
        weights = merge_weights(states, query, sizes)
        owner = group_index(sizes)
        weighted = weights.unsqueeze(-1) * states.float()
        merged = weighted.new_zeros(sizes.numel(), hidden).index_add(0, owner, weighted)
    return merged, sizes, weights


def _checked_group_index(group_sizes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    if group_sizes.dim() != 1 or bool((group_sizes < 1).any()) or int(group_sizes.sum()) != num_tokens:
        raise InvalidInputError(
            f"group_sizes must be positive and sum to the {num_tokens} tokens, got {group_sizes.tolist()}."
        )
    return group_index(group_sizes.to(torch.long))


def _segment_max(values: torch.Tensor, owner: torch.Tensor, groups: int) -> torch.Tensor:
    start = torch.full((groups,), float("-inf"), dtype=values.dtype, device=values.device)
    return start.scatter_reduce(0, owner, values, reduce="amax")


# ---------------------------------------------------------------------------------------------
# Reading passage + question with the frozen backbone.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The trainable module.
# ---------------------------------------------------------------------------------------------


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
        super().__init__()
        self.config = config
        self.fingerprint = fingerprint
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
            token_mask: [B, T] bool, the context tokens to compress.
            query_vectors: [B, H] one query vector per row.
            ratio: compression ratio m (default ``config.ratio``).

        Returns:
            slots [B, G, H] float32 in the reader's input-embedding space (G = the largest
            ceil(n_b / m) of the batch) and slot_mask [B, G] bool. Differentiable w.r.t. the projector.
        """
        ratio = validate_ratio(self.config.ratio if ratio is None else ratio, self.config.max_ratio)
        token_mask = token_mask.to(device=layer_states.device, dtype=torch.bool)
        merged = [
            mig_merge(layer_states[row][token_mask[row]], query_vectors[row], ratio)[0]
            for row in range(layer_states.shape[0])
        ]
        counts = torch.tensor([m.shape[0] for m in merged], device=layer_states.device)
        projected = self.projector(torch.cat(merged))
        slots = pad_sequence(list(torch.split(projected, counts.tolist())), batch_first=True)
        slot_mask = torch.arange(slots.shape[1], device=slots.device).unsqueeze(0) < counts.unsqueeze(1)
        return slots, slot_mask


# ---------------------------------------------------------------------------------------------
# Inference and training front ends.
# ---------------------------------------------------------------------------------------------


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


def _check_fits(backbone: Backbone, segments: Sequence[Segment], question_ids: Sequence[Sequence[int]]) -> None:
    """Refuse a question that does not fit the backbone together with a passage segment (never truncated)."""
    limit = backbone.max_positions
    if limit is None:
        return
    prefix = int(backbone.bos_token_id is not None)
    for segment in segments:
        question = len(question_ids[segment.passage])
        total = prefix + len(segment.token_ids) + question
        if total > limit:
            raise InvalidInputError(
                f"The query of passage {segment.passage} does not fit the backbone: COMI reads a segment of the "
                f"passage ({prefix + len(segment.token_ids)} positions with BOS) followed by the question "
                f"({question} tokens), {total} positions, but {backbone.name} reads at most {limit}. "
                "Shorten the question."
            )


def _check_queries(query: str | Sequence[str] | None, count: int) -> list[str]:
    """One non-empty question per passage (a single string applies to all of them)."""
    if query is None:
        raise InvalidInputError(
            "COMI is query-aware: it reads the question together with each passage. Pass the question "
            "with query='...' (one string for all passages, or one per passage)."
        )
    queries = [query] * count if isinstance(query, str) else query
    if not isinstance(queries, Sequence):
        raise InvalidInputError(f"query must be a string or a list of strings, got {type(query).__name__}.")
    if len(queries) != count:
        raise InvalidInputError(
            f"Got {len(queries)} query strings for {count} passages; pass one query per passage or one string."
        )
    for index, question in enumerate(queries):
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(
                f"Query {index} is empty or not a string: COMI is query-aware and needs the question "
                "(query='...') to compress a passage."
            )
    return list(queries)


class COMICompressor:
    """Query-aware compression: passages + question -> soft slots (ceil(n / m) per 512-token segment).

    Slots depend on the question, so they are computed per query and never stored.

    >>> compressor = COMICompressor.from_pretrained()
    >>> soft = compressor.compress(["Paris is the capital of France."], query="What is France's capital?")
    """

    kind = "comi"
    query_aware = True
    reader_adapter = None  # the projector was trained for the frozen reader

    def __init__(self, backbone: Backbone, merger: COMIMerger, batch_size: int = 8) -> None:
        check_fingerprint(merger.fingerprint, backbone.fingerprint, "This COMI merger")
        self.backbone = backbone
        self.merger = merger.to(backbone.device).eval()
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        merger: str | os.PathLike | COMIMerger | None = None,
        backbone: str | os.PathLike | Backbone | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> COMICompressor:
        """Defaults: the embedded SmolLM2 backbone and the COMI merger shipped for it."""
        if not isinstance(backbone, Backbone):
            backbone = Backbone.from_pretrained(backbone, device=device)
        if not isinstance(merger, COMIMerger):
            merger = COMIMerger.from_pretrained(merger)
        return cls(backbone, merger, batch_size=batch_size)

    @property
    def config(self) -> COMIConfig:
        return self.merger.config

    @property
    def max_ratio(self) -> int:
        return self.config.max_ratio

    @property
    def default_ratio(self) -> int:
        return self.config.ratio

    @property
    def fingerprint(self) -> str:
        """Identifies backbone + merger weights (the slots also depend on the query)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.backbone.fingerprint.digest.encode())
            digest.update(repr(sorted(self.config.to_dict().items())).encode())
            for name, tensor in sorted(self.merger.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = f"{self.kind}-{digest.hexdigest()[:16]}"
        return self._fingerprint

    def compress(
        self,
        texts: str | Sequence[str],
        *,
        query: str | Sequence[str] | None = None,
        ratio: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Compress each passage given its question into ceil(n / m) slots per 512-token segment.

        Args:
            texts: one passage or a list of passages.
            query: the question, one string for all passages or one per passage (required).
            ratio: compression ratio m (default ``config.ratio``; 1 to ``config.max_ratio``).
        """
        texts = check_texts(texts)
        queries = _check_queries(query, len(texts))
        if not texts:
            return SoftContext.empty(self.backbone.hidden_size)
        return self.compress_token_ids(
            self.backbone.tokenize(texts),
            queries,
            ratio=ratio,
            batch_size=batch_size,
            show_progress=show_progress,
        )

    @torch.no_grad()
    def compress_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        question: str | Sequence[str],
        *,
        ratio: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Like :meth:`compress`, for passages already tokenised (no special tokens)."""
        ratio = validate_ratio(self.config.ratio if ratio is None else ratio, self.config.max_ratio)
        queries = _check_queries(question, len(token_ids))
        if not token_ids:
            return SoftContext.empty(self.backbone.hidden_size)
        question_ids = question_token_ids(self.backbone, queries)
        segments = split_into_segments(token_ids, self.config.segment_length)
        _check_fits(self.backbone, segments, question_ids)
        batch_size = batch_size or self.batch_size
        show = show_progress if show_progress is not None else len(segments) > 4 * batch_size
        slots = encode_pairs(
            self.backbone,
            self.merger,
            [segment.token_ids for segment in segments],
            [question_ids[segment.passage] for segment in segments],
            ratio,
            batch_size,
            show,
        )
        passages: list[list[torch.Tensor]] = [[] for _ in token_ids]
        for segment, segment_slots in zip(segments, slots, strict=True):  # segments are in passage order
            passages[segment.passage].append(segment_slots.float())
        return self.soft_context([torch.cat(parts) for parts in passages], [len(ids) for ids in token_ids])

    def soft_context(self, passages: Sequence[torch.Tensor], token_counts: Sequence[int]) -> SoftContext:
        """A SoftContext of slots this compressor made (read by the frozen reader: no adapter is recorded)."""
        return SoftContext.from_passages(passages, token_counts)
