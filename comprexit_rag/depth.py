"""Depth-wise transmission: each token attends over its own L+1 layer states to form an anchor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class DepthTransmission(nn.Module):
    """Per-token attention over layers (METHOD.md 1a).

    The query is a learned softmax mixture of the layers (zero-initialised: the layer
    mean). Keys and values are linear in the layer states, so the forward pass uses the
    algebraically equal projection-free form

        q . (Wk h_l + b_k + e_l) = (Wk^T q) . h_l + q . (b_k + e_l)
        sum_l beta_l (Wv h_l + b_v) = Wv (sum_l beta_l h_l) + b_v

    which needs no per-layer projection and never stacks the L+1 states.
    """

    def __init__(self, hidden_size: int, num_hidden_states: int, key_dim: int, temperature: float) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_hidden_states))
        self.layer_embedding = nn.Parameter(torch.randn(num_hidden_states, key_dim) * 0.02)
        self.query = nn.Linear(hidden_size, key_dim)
        self.key = nn.Linear(hidden_size, key_dim)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.scale = 1.0 / (math.sqrt(key_dim) * temperature)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return anchors [B, T, H] and layer weights beta [B, T, L+1]."""
        mixture = torch.softmax(self.layer_logits, dim=0)
        query = self.query(_weighted_sum(hidden_states, mixture))
        key_query = query @ self.key.weight.to(query.dtype)  # Wk^T q, [B, T, H]
        offset = query @ (self.key.bias + self.layer_embedding).to(query.dtype).T  # [B, T, L+1]
        logits = torch.stack(
            [torch.einsum("bth,bth->bt", state.to(key_query.dtype), key_query) for state in hidden_states], dim=-1
        )
        weights = torch.softmax((logits + offset).float() * self.scale, dim=-1)
        pooled = _weighted_sum(hidden_states, weights)
        return self.value(pooled), weights

    def forward_direct(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference form with per-layer keys and values (memory-hungry; used to test ``forward``)."""
        states = torch.stack(list(hidden_states), dim=2).float()  # [B, T, L+1, H]
        mixture = torch.softmax(self.layer_logits, dim=0)
        query = self.query((states * mixture[:, None]).sum(dim=2))
        keys = self.key(states) + self.layer_embedding
        values = self.value(states)
        weights = torch.softmax(torch.einsum("btd,btld->btl", query, keys) * self.scale, dim=-1)
        return torch.einsum("btl,btlh->bth", weights, values), weights


def _weighted_sum(states: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_l weights[..., l] * states[l] in float32, accumulated one layer at a time."""
    total = None
    for index, state in enumerate(states):
        weight = weights[index] if weights.dim() == 1 else weights[..., index : index + 1]
        term = state.float() * weight
        total = term if total is None else total + term
    return total
