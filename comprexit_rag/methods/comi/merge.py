"""COMI's two stages on token states: regroup by Marginal Information Gain, then merge.

Pure tensor functions, no parameters: the coarse stage starts from ``G = ceil(n / m)`` contiguous
near-equal groups, scores each group by ``MIG = relevance - redundancy`` and reallocates the sizes to
``n * softmax(-MIG)``; the fine stage merges each group into one vector with softmax weights of
``cos(h_i, q) - max_{j != i in group} cos(h_i, h_j)``.

:func:`mig_merge` runs both stages on one sequence; :func:`mig_merge_batch` runs them on a padded
batch with the same results, all rows at once on the device except the water-filling allocation,
which runs per row on the CPU after a single transfer of every row's MIG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError


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


def mig_merge_batch(
    states: torch.Tensor, token_mask: torch.Tensor, query: torch.Tensor, ratio: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """COMI on a padded batch: :func:`mig_merge` of every row's masked tokens, without a loop over rows.

    A loop over :func:`mig_merge` costs tens of kernel launches and several device-to-host syncs per
    row. Here every stage runs on all rows at once; the only per-row work is the water-filling
    :func:`allocate_group_sizes` on the CPU, between one transfer of all the MIG vectors to the host
    and one transfer of all the group sizes back. A ``token_mask`` on the CPU saves one more sync.
    Like :func:`mig_merge`, it holds a token-by-token similarity matrix per row: [B, N, N] floats for
    N = the largest n_b.

    Args:
        states: [B, T, H] token states (any float dtype; computed in float32).
        token_mask: [B, T] bool, the tokens to merge (in position order; they need not be contiguous).
        query: [B, H] one query vector per row.
        ratio: target compression ratio m; row b gets G_b = ceil(n_b / m) vectors.

    Returns:
        merged [B, G, H] float32 (G = the largest G_b, zeros after a row's G_b vectors), merged_mask
        [B, G] bool (True for the first G_b vectors) and group sizes [B, G] long (0 where masked out).
        Row b's first G_b vectors and sizes equal ``mig_merge`` of its masked tokens.
    """
    if states.dim() != 3 or token_mask.shape != states.shape[:2] or query.shape != (states.shape[0], states.shape[2]):
        raise InvalidInputError(
            f"Expected states [B, T, H], token_mask [B, T] and query [B, H], got {tuple(states.shape)}, "
            f"{tuple(token_mask.shape)} and {tuple(query.shape)}."
        )
    batch, _, hidden = states.shape
    device = states.device
    # The mask may stay on the CPU (its row lengths then cost no sync); anywhere else it joins the states.
    token_mask = token_mask.to(device=device if token_mask.device.type != "cpu" else None, dtype=torch.bool)
    counts_list = token_mask.sum(dim=1).tolist()
    tokens = max(counts_list, default=0)
    groups = num_groups(tokens, ratio)
    if groups == 0:
        sizes = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return states.new_zeros(batch, 0, hidden, dtype=torch.float32), sizes.bool(), sizes
    with torch.autocast(device_type=device.type, enabled=False):
        # Compact each row's masked tokens to the left, keeping their order: [B, N, H], N = max n_b.
        order = torch.sort(token_mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :tokens]
        # Host-to-device copies of index tensors need not wait for the device's queue to drain.
        order = order.to(device, non_blocking=True)
        counts = torch.tensor(counts_list, dtype=torch.long).to(device, non_blocking=True).unsqueeze(1)
        positions = torch.arange(tokens, device=device).expand(batch, tokens)
        valid = positions < counts
        compact = states[torch.arange(batch, device=device).unsqueeze(1), order].float()
        compact = compact.masked_fill(~valid.unsqueeze(-1), 0.0)
        units = F.normalize(compact, dim=-1)
        relevance = torch.bmm(units, F.normalize(query.float(), dim=-1).unsqueeze(-1)).squeeze(-1)

        row_groups = -(-counts // ratio)
        initial_owner = _near_equal_owner(counts, row_groups, valid, groups)
        mig = _batched_group_mig(units, relevance, initial_owner, row_groups, groups)
        mig_host = mig.detach().cpu()
        sizes_host = torch.zeros(batch, groups, dtype=torch.long)
        for row, count in enumerate(counts_list):
            if count:
                row_mig = mig_host[row, : num_groups(count, ratio)]
                sizes_host[row, : row_mig.numel()] = allocate_group_sizes(row_mig, count)
        sizes = sizes_host.to(device, non_blocking=True)

        # Contiguous groups of the allocated sizes; padding tokens go to the spare group ``groups``.
        owner = torch.searchsorted(sizes.cumsum(dim=1), positions.contiguous(), right=True)
        weights = _batched_merge_weights(units, relevance, owner, valid, groups)
        weighted = weights.unsqueeze(-1) * compact  # padding: weight 0, state 0
        merged = weighted.new_zeros(batch, groups + 1, hidden)
        merged = merged.scatter_add(1, owner.unsqueeze(-1).expand(-1, -1, hidden), weighted)[:, :groups]
    return merged, sizes > 0, sizes


def _near_equal_owner(counts: torch.Tensor, row_groups: torch.Tensor, valid: torch.Tensor, groups: int) -> torch.Tensor:
    """Group of every token [B, N] for :func:`near_equal_sizes` per row; padding goes to ``groups``."""
    base = counts // row_groups.clamp(min=1)
    extra = counts - base * row_groups  # the first ``extra`` groups hold base + 1 tokens
    positions = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
    in_long = extra * (base + 1)
    owner = torch.where(
        positions < in_long, positions // (base + 1), extra + (positions - in_long) // base.clamp(min=1)
    )
    return owner.masked_fill(~valid, groups)


def _batched_group_mig(
    units: torch.Tensor, relevance: torch.Tensor, owner: torch.Tensor, row_groups: torch.Tensor, groups: int
) -> torch.Tensor:
    """:func:`group_mig` of every row, [B, G]; groups a row does not have (g >= G_b) get MIG 0.

    ``owner`` [B, N] holds each token's group, ``groups`` (one past the last real group) for padding.
    """
    batch, tokens = relevance.shape
    group_relevance = _batched_segment_max(relevance, owner, groups)
    # Representative: the first token of the group that reaches the group's maximum relevance.
    positions = torch.arange(tokens, device=owner.device).expand(batch, tokens)
    candidates = torch.where(relevance == group_relevance.gather(1, owner), positions, tokens)
    representative = torch.full((batch, groups + 1), tokens, dtype=torch.long, device=owner.device)
    representative = representative.scatter_reduce(1, owner, candidates, reduce="amin")[:, :groups]
    reps = units.gather(1, representative.clamp(max=tokens - 1).unsqueeze(-1).expand(-1, -1, units.shape[-1]))
    others = torch.arange(groups, device=owner.device)
    other_group = (others.unsqueeze(0) != others.unsqueeze(1)) & (others < row_groups).unsqueeze(1)
    similarity = torch.bmm(reps, reps.transpose(1, 2)).masked_fill(~other_group, float("-inf"))
    redundancy = similarity.max(dim=2).values
    group_relevance = group_relevance[:, :groups]
    # A row with one group has no redundancy (its MIG is its relevance), as in ``group_mig``.
    mig = torch.where(row_groups == 1, group_relevance, group_relevance - redundancy)
    return mig.masked_fill(others >= row_groups, 0.0)


def _batched_merge_weights(
    units: torch.Tensor, relevance: torch.Tensor, owner: torch.Tensor, valid: torch.Tensor, groups: int
) -> torch.Tensor:
    """:func:`merge_weights` of every row, [B, N]; 0 for padding tokens (``valid`` False)."""
    tokens = relevance.shape[1]
    same_group = (owner.unsqueeze(2) == owner.unsqueeze(1)) & valid.unsqueeze(1) & valid.unsqueeze(2)
    same_group &= ~torch.eye(tokens, dtype=torch.bool, device=owner.device)
    similarity = torch.bmm(units, units.transpose(1, 2)).masked_fill(~same_group, float("-inf"))
    redundancy = similarity.max(dim=2).values
    redundancy = torch.where(same_group.any(dim=2), redundancy, torch.zeros_like(redundancy))
    score = relevance - redundancy
    exp = torch.exp(score - _batched_segment_max(score, owner, groups).gather(1, owner))
    total = exp.new_zeros(exp.shape[0], groups + 1).scatter_add(1, owner, exp)
    return torch.where(valid, exp / total.gather(1, owner), torch.zeros_like(exp))


def _checked_group_index(group_sizes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    if group_sizes.dim() != 1 or bool((group_sizes < 1).any()) or int(group_sizes.sum()) != num_tokens:
        raise InvalidInputError(
            f"group_sizes must be positive and sum to the {num_tokens} tokens, got {group_sizes.tolist()}."
        )
    return group_index(group_sizes.to(torch.long))


def _segment_max(values: torch.Tensor, owner: torch.Tensor, groups: int) -> torch.Tensor:
    start = torch.full((groups,), float("-inf"), dtype=values.dtype, device=values.device)
    return start.scatter_reduce(0, owner, values, reduce="amax")


def _batched_segment_max(values: torch.Tensor, owner: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-row max over each group, [B, groups + 1] (the last column collects the padding)."""
    start = torch.full((values.shape[0], groups + 1), float("-inf"), dtype=values.dtype, device=values.device)
    return start.scatter_reduce(1, owner, values, reduce="amax")
