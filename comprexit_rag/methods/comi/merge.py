"""COMI's two stages on one sequence's token states: regroup by Marginal Information Gain, then merge.

Pure tensor functions, no parameters: the coarse stage starts from ``G = ceil(n / m)`` contiguous
near-equal groups, scores each group by ``MIG = relevance - redundancy`` and reallocates the sizes to
``n * softmax(-MIG)``; the fine stage merges each group into one vector with softmax weights of
``cos(h_i, q) - max_{j != i in group} cos(h_i, h_j)``.
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


def _checked_group_index(group_sizes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    if group_sizes.dim() != 1 or bool((group_sizes < 1).any()) or int(group_sizes.sum()) != num_tokens:
        raise InvalidInputError(
            f"group_sizes must be positive and sum to the {num_tokens} tokens, got {group_sizes.tolist()}."
        )
    return group_index(group_sizes.to(torch.long))


def _segment_max(values: torch.Tensor, owner: torch.Tensor, groups: int) -> torch.Tensor:
    start = torch.full((groups,), float("-inf"), dtype=values.dtype, device=values.device)
    return start.scatter_reduce(0, owner, values, reduce="amax")
