"""Width-wise transmission: a window's anchors are moved into its slots by optimal transport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ...layout import to_device
from .sinkhorn import sinkhorn

# Beyond this many segments, a token is equally far from every slot: the locality term stays bounded,
# so the plan's exponent (max cost / epsilon) stays in the range of the fast scaling form of Sinkhorn.
LOCALITY_CAP = 4.0


@dataclass
class Windows:
    """Non-overlapping windows of valid anchors, packed across a batch."""

    anchors: torch.Tensor  # [num_windows, W, H]
    mask: torch.Tensor  # [num_windows, W] bool, True for real tokens (a prefix of each window)
    owner: torch.Tensor  # [num_windows] index of the sequence each window came from
    # Host-side copies of what decides the shapes, so that later steps need not read the device:
    owners: list[int] | None = None  # owner, as Python ints
    lengths: list[int] | None = None  # real tokens in each window

    def slot_counts(self, ratio: int) -> list[int] | None:
        """Slots of each window at ``ratio`` (ceil(tokens / ratio)), computed on the host; None if unknown."""
        return None if self.lengths is None else [-(-length // ratio) for length in self.lengths]


def split_windows(anchors: torch.Tensor, mask: torch.Tensor, window: int) -> Windows:
    """Cut each sequence's valid anchors into windows of ``window`` tokens (the last may be short).

    Valid tokens are first moved to the front of their row (stable, so order is kept),
    which makes the windows independent of how much padding surrounds them.

    ``mask`` may live on the host while ``anchors`` are on an accelerator: then nothing waits
    for the device (the number of windows is read from the host mask). A mask on the device
    costs one synchronisation, to read its per-row counts.
    """
    batch, length, hidden = anchors.shape
    device = anchors.device
    counts = mask.sum(dim=1).tolist()  # the only value that decides shapes (host-side if mask is)
    mask = to_device(mask, device)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = anchors.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden))
    num_windows = -(-length // window)
    packed = F.pad(packed, (0, 0, 0, num_windows * window - length)).view(batch * num_windows, window, hidden)

    owners, lengths, used = [], [], []
    for row, count in enumerate(counts):
        for index in range(-(-count // window)):
            owners.append(row)
            lengths.append(min(window, count - index * window))
            used.append(row * num_windows + index)
    used_index = to_device(torch.tensor(used, dtype=torch.long), device)
    owner = to_device(torch.tensor(owners, dtype=torch.long), device)
    window_lengths = to_device(torch.tensor(lengths, dtype=torch.long), device)
    window_mask = torch.arange(window, device=device).unsqueeze(0) < window_lengths.unsqueeze(1)
    return Windows(
        anchors=packed.index_select(0, used_index),
        mask=window_mask,
        owner=owner,
        owners=owners,
        lengths=lengths,
    )


def row_slot_counts(owners: Sequence[int], slot_counts: Sequence[int], batch_size: int) -> list[int]:
    """Slots of each sequence (the sum over its windows), from host-side window owners and counts."""
    sizes = [0] * batch_size
    for row, count in zip(owners, slot_counts, strict=True):
        sizes[row] += count
    return sizes


def join_windows(
    slots: torch.Tensor,
    slot_mask: torch.Tensor,
    owner: torch.Tensor | Sequence[int],
    batch_size: int,
    slot_counts: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regroup window slots [N, K, H] by sequence, in order: [B, S, H] padded, and the [B, S] mask.

    With ``slot_counts`` (slots of each window, a prefix of its K, as host ints) and ``owner`` as
    host ints, the layout is computed on the host and nothing waits for the device; otherwise the
    counts are read from ``slot_mask`` (one synchronisation).
    """
    if slot_counts is None:
        counts = torch.zeros(batch_size, dtype=torch.long, device=slots.device)
        owner = torch.as_tensor(owner, dtype=torch.long, device=slots.device)
        counts.index_add_(0, owner, slot_mask.sum(dim=1))
        pieces = list(torch.split(slots[slot_mask], counts.tolist()))
        padded = pad_sequence(pieces, batch_first=True)
        mask = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < counts.unsqueeze(1)
        return padded, mask

    owners = owner.tolist() if isinstance(owner, torch.Tensor) else list(owner)
    num_windows, per_window, hidden = slots.shape
    sizes, starts = [0] * batch_size, []  # slots of each sequence; where each window's slots go in its row
    for row, count in zip(owners, slot_counts, strict=True):
        starts.append(sizes[row])
        sizes[row] += count
    width = max(sizes, default=0)
    # Host-side gather index: position (row, s) of the output takes flat slot window * K + k.
    slot = torch.arange(per_window)
    taken = slot < torch.tensor(slot_counts, dtype=torch.long).unsqueeze(1)  # [N, K]
    target = (torch.tensor(owners, dtype=torch.long) * width + torch.tensor(starts, dtype=torch.long)).unsqueeze(1)
    index = torch.zeros(batch_size * width, dtype=torch.long)
    index[(target + slot)[taken]] = torch.arange(num_windows * per_window).view(num_windows, per_window)[taken]
    index = to_device(index, slots.device)
    mask = torch.arange(width, device=slots.device) < to_device(torch.tensor(sizes), slots.device).unsqueeze(1)
    gathered = slots.reshape(num_windows * per_window, hidden).index_select(0, index)
    gathered = gathered.view(batch_size, width, hidden)
    return torch.where(mask.unsqueeze(-1), gathered, 0), mask


def segment_means(windows: Windows, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of ceil(n / ratio) near-equal contiguous segments of each window's n tokens.

    Token i of a window goes to segment floor(i * K_n / n); returns [N, K, H] means and
    the [N, K] mask of the segments that exist (K = ceil(W / ratio)).
    """
    anchors, mask = windows.anchors, windows.mask
    window = anchors.shape[1]
    num_slots = -(-window // ratio)
    tokens = mask.sum(dim=1, keepdim=True)  # [N, 1]
    slots_used = torch.div(tokens + ratio - 1, ratio, rounding_mode="floor")  # ceil(n / r)
    slot_mask = torch.arange(num_slots, device=anchors.device).unsqueeze(0) < slots_used
    token_index = torch.arange(window, device=anchors.device).unsqueeze(0)
    segment = torch.div(token_index * slots_used, tokens, rounding_mode="floor").clamp(max=num_slots - 1)
    membership = (F.one_hot(segment, num_slots) * mask.unsqueeze(-1)).to(anchors.dtype)
    means = membership.transpose(1, 2) @ anchors / membership.sum(dim=1).clamp(min=1).unsqueeze(-1)
    return means, slot_mask


def segment_offsets(mask: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
    """[N, W, K] signed offset from each slot to each token, in segments of its window.

    A window of n tokens and K_n slots is cut into K_n segments of n / K_n tokens (as in
    :func:`segment_means`): token i sits at (i + 0.5) K_n / n segments, slot k at k + 0.5.
    """
    tokens = mask.sum(dim=1, keepdim=True).clamp(min=1)  # [N, 1]
    slots_used = slot_mask.sum(dim=1, keepdim=True)
    position = (torch.arange(mask.shape[1], device=mask.device) + 0.5) * slots_used / tokens  # [N, W]
    centre = torch.arange(slot_mask.shape[1], device=mask.device) + 0.5  # [K]
    return position.unsqueeze(-1) - centre


def rotate_pairs(values: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of dimensions (0, 1), (2, 3), ... of ``values`` [..., H] by ``angles`` [..., H / 2]."""
    pairs = values.unflatten(-1, (-1, 2))
    cos, sin = angles.cos(), angles.sin()
    first, second = pairs[..., 0], pairs[..., 1]
    return torch.stack((first * cos - second * sin, first * sin + second * cos), dim=-1).flatten(-2)


class WidthTransmission(nn.Module):
    """Optimal-transport allocation of a window's anchors to its slots.

    The paper's width-wise transmission (arXiv 2602.03784; README, Design).
    """

    def __init__(
        self,
        hidden_size: int,
        cost_dim: int,
        source_temperature: float,
        uniform_mix: float,
        epsilon: float,
        iterations: int,
        position_binding: bool = False,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.cost = nn.Linear(hidden_size, cost_dim, bias=False)
        self.source_score = nn.Linear(hidden_size, 1, bias=False)
        nn.init.zeros_(self.source_score.weight)  # uniform source mass at the start
        self.value = nn.Linear(hidden_size, hidden_size)
        self.source_temperature = source_temperature
        self.uniform_mix = uniform_mix
        self.epsilon = epsilon
        self.iterations = iterations
        self.position_frequencies: nn.Parameter | None = None
        if position_binding:
            self.bind_positions()

    def bind_positions(self) -> None:
        """Rotate each value by its token's offset from the slot it goes to, one learned frequency per
        pair of dimensions (a departure from the paper; BENCHMARKS.md, Departures).

        A slot is otherwise a weighted mean of its tokens' values, which says nothing of their order: at 16x
        one slot holds about 16 tokens. The frequencies start at zero, so a trained head that starts binding
        computes the same slots until they move.
        """
        if self.position_frequencies is None:
            pairs = self.value.out_features // 2
            self.position_frequencies = nn.Parameter(torch.zeros(pairs, device=self.value.weight.device))

    def forward(
        self, windows: Windows, ratio: int, locality_weight: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return slots [N, K, H], slot mask [N, K] and transport plans [N, W, K] (K = ceil(W / ratio)).

        ``locality_weight`` > 0 adds ``locality_weight * min(distance, LOCALITY_CAP)`` to the costs, the
        distance between a token and a slot in segments (a departure from the paper, off by default; see
        BENCHMARKS.md, Departures).
        """
        anchors, mask = windows.anchors, windows.mask
        initial_slots, slot_mask = segment_means(windows, ratio)
        tokens = mask.sum(dim=1, keepdim=True)  # [N, 1]
        slots_used = slot_mask.sum(dim=1, keepdim=True)

        normed_anchors = self.norm(anchors)
        cost = 1.0 - F.normalize(self.cost(normed_anchors).float(), dim=-1) @ F.normalize(
            self.cost(self.norm(initial_slots)).float(), dim=-1
        ).transpose(1, 2)
        max_cost = 2.0  # 1 - cosine lies in [0, 2]
        if locality_weight:
            cost = cost + locality_weight * segment_offsets(mask, slot_mask).abs().clamp(max=LOCALITY_CAP)
            max_cost += locality_weight * LOCALITY_CAP

        scores = self.source_score(normed_anchors).squeeze(-1).float() / self.source_temperature
        learned = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        source_mass = (1 - self.uniform_mix) * learned + self.uniform_mix * mask / tokens
        target_mass = slot_mask / slots_used

        # The known bound on the costs lets sinkhorn pick its form without reading them.
        plan = sinkhorn(cost, source_mass, target_mass, self.epsilon, self.iterations, max_cost=max_cost)
        # Capacity-normalised values: each slot is the plan-weighted mean of the values sent to it.
        values = self.value(normed_anchors).float()
        if self.position_frequencies is not None:
            # R(i - c_k) v_i for token i and slot k's centre c_k (in tokens) = R(-c_k) R(i) v_i: rotate the
            # values by their position, pool, then rotate each slot back by its centre.
            frequencies = self.position_frequencies.float()
            positions = torch.arange(values.shape[1], device=values.device, dtype=torch.float32)
            values = rotate_pairs(values, positions[:, None] * frequencies)
        slots = (plan.transpose(1, 2) @ values) / target_mass.clamp(min=1e-12).unsqueeze(-1)
        if self.position_frequencies is not None:
            centres = (torch.arange(slots.shape[1], device=slots.device) + 0.5) * tokens / slots_used.clamp(min=1)
            slots = rotate_pairs(slots, -centres.unsqueeze(-1) * frequencies)
        return slots * slot_mask.unsqueeze(-1), slot_mask, plan
