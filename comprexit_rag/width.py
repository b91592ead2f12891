"""Width-wise transmission: a window's anchors are moved into its slots by optimal transport."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from .sinkhorn import log_sinkhorn


@dataclass
class Windows:
    """Non-overlapping windows of valid anchors, packed across a batch."""

    anchors: torch.Tensor  # [num_windows, W, H]
    mask: torch.Tensor  # [num_windows, W] bool, True for real tokens (a prefix of each window)
    owner: torch.Tensor  # [num_windows] index of the sequence each window came from


def split_windows(anchors: torch.Tensor, mask: torch.Tensor, window: int) -> Windows:
    """Cut each sequence's valid anchors into windows of ``window`` tokens (the last may be short).

    Valid tokens are first moved to the front of their row (stable, so order is kept),
    which makes the windows independent of how much padding surrounds them.
    """
    batch, length, hidden = anchors.shape
    counts = mask.sum(dim=1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = anchors.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden))
    num_windows = -(-length // window)
    packed = F.pad(packed, (0, 0, 0, num_windows * window - length)).view(batch, num_windows, window, hidden)
    position = torch.arange(num_windows * window, device=anchors.device).view(num_windows, window)
    valid = position.unsqueeze(0) < counts.view(batch, 1, 1)
    used = valid.any(dim=-1)
    owner = torch.arange(batch, device=anchors.device).unsqueeze(1).expand(batch, num_windows)
    return Windows(anchors=packed[used], mask=valid[used], owner=owner[used])


def join_windows(
    slots: torch.Tensor, slot_mask: torch.Tensor, owner: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regroup window slots [N, K, H] by sequence, in order: [B, S, H] padded, and the [B, S] mask."""
    counts = torch.zeros(batch_size, dtype=torch.long, device=slots.device)
    counts.index_add_(0, owner, slot_mask.sum(dim=1))
    pieces = list(torch.split(slots[slot_mask], counts.tolist()))
    padded = pad_sequence(pieces, batch_first=True)
    mask = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < counts.unsqueeze(1)
    return padded, mask


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


class WidthTransmission(nn.Module):
    """Optimal-transport allocation of a window's anchors to its slots (METHOD.md 1b)."""

    def __init__(
        self,
        hidden_size: int,
        cost_dim: int,
        source_temperature: float,
        uniform_mix: float,
        epsilon: float,
        iterations: int,
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

    def forward(self, windows: Windows, ratio: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return slots [N, K, H], slot mask [N, K] and transport plans [N, W, K] (K = ceil(W / ratio))."""
        anchors, mask = windows.anchors, windows.mask
        initial_slots, slot_mask = segment_means(windows, ratio)
        tokens = mask.sum(dim=1, keepdim=True)  # [N, 1]
        slots_used = slot_mask.sum(dim=1, keepdim=True)

        normed_anchors = self.norm(anchors)
        cost = 1.0 - F.normalize(self.cost(normed_anchors).float(), dim=-1) @ F.normalize(
            self.cost(self.norm(initial_slots)).float(), dim=-1
        ).transpose(1, 2)

        scores = self.source_score(normed_anchors).squeeze(-1).float() / self.source_temperature
        learned = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        source_mass = (1 - self.uniform_mix) * learned + self.uniform_mix * mask / tokens
        target_mass = slot_mask / slots_used

        plan = log_sinkhorn(cost, source_mass, target_mass, self.epsilon, self.iterations)
        # Capacity-normalised values: each slot is the plan-weighted mean of the values sent to it.
        values = self.value(normed_anchors).float()
        slots = (plan.transpose(1, 2) @ values) / target_mass.clamp(min=1e-12).unsqueeze(-1)
        return slots * slot_mask.unsqueeze(-1), slot_mask, plan
