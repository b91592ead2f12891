"""Depth-wise transmission: each token attends over its own L+1 layer states to form an anchor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_CHUNK_TOKENS = 4096
MIN_CHUNKS = 8  # smaller inputs are still cut in eight: a chunk holds at most 1/8 of the states


class DepthTransmission(nn.Module):
    """Per-token attention over layers (the paper's depth-wise transmission, arXiv 2602.03784; README, Design).

    The query is a learned softmax mixture of the layers (zero-initialised: the layer
    mean). Keys and values are linear in the layer states, so the forward pass uses the
    algebraically equal projection-free form

        q . (Wk h_l + b_k + e_l) = (Wk^T q) . h_l + q . (b_k + e_l)
        sum_l beta_l (Wv h_l + b_v) = Wv (sum_l beta_l h_l) + b_v

    which needs no per-layer projection. Tokens (batch and length flattened) are processed
    in chunks of at most ``chunk_tokens`` and at most an eighth of all tokens: the L+1 states
    of one chunk are stacked into [n, L+1, H] and the three sums over layers (mixture @ stack,
    stack @ Wk^T q, beta @ stack) are batched matrix products, run in the autocast dtype under
    autocast and in float32 otherwise -- the states' own dtype in the usual cases (bfloat16
    backbone under autocast, float32 backbone without), so nothing is converted. Only one
    chunk is stacked at a time: the extra memory is bounded by ``chunk_tokens * (L+1) * H``
    elements and by an eighth of the hidden states (a quarter where bfloat16 states are summed in
    float32). ``forward_direct`` is the reference form.

    With ``standardize``, each layer's states are first mapped to ``(h_l - shift_l) * scale_l`` per
    dimension (buffers, set by :meth:`set_statistics`; identity until then). The raw states of a
    decoder differ in scale by two orders of magnitude across layers and share a few outlier
    dimensions, which saturates the attention over layers from the first step.
    """

    def __init__(
        self,
        hidden_size: int,
        num_hidden_states: int,
        key_dim: int,
        temperature: float,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_hidden_states))
        self.layer_embedding = nn.Parameter(torch.randn(num_hidden_states, key_dim) * 0.02)
        self.query = nn.Linear(hidden_size, key_dim)
        self.key = nn.Linear(hidden_size, key_dim)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.scale = 1.0 / (math.sqrt(key_dim) * temperature)
        self.chunk_tokens = chunk_tokens  # not a parameter: changes memory and speed, not results
        self.standardize = standardize
        if standardize:  # saved with the weights: a head is only valid with the statistics it was trained on
            self.register_buffer("layer_shift", torch.zeros(num_hidden_states, hidden_size))
            self.register_buffer("layer_scale", torch.ones(num_hidden_states, hidden_size))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise layer l, dimension d as ``(h - mean[l, d]) / std[l, d]`` from now on ([L+1, H] each)."""
        if not self.standardize:
            raise ValueError("set_statistics() needs a DepthTransmission built with standardize=True.")
        self.layer_shift.copy_(mean)
        self.layer_scale.copy_(1.0 / std.clamp(min=1e-4))

    def _prepare(self, state: torch.Tensor, layer: int, dtype: torch.dtype) -> torch.Tensor:
        """One layer's states in the compute dtype, standardised (in float32) when configured."""
        if not self.standardize:
            return state.to(dtype)
        return ((state.float() - self.layer_shift[layer]) * self.layer_scale[layer]).to(dtype)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return anchors [B, T, H] and layer weights beta [B, T, L+1] (float32)."""
        batch, length, hidden = hidden_states[0].shape
        device_type = hidden_states[0].device.type
        # The dtype the layer sums run in: what autocast would give a matmul here, else float32
        # (as the per-layer float32 sums did); no conversion when the states already have it.
        if torch.is_autocast_enabled(device_type):
            compute_dtype = torch.get_autocast_dtype(device_type)
        else:
            compute_dtype = torch.float32
        flat = [state.reshape(batch * length, hidden) for state in hidden_states]
        total = batch * length
        step = max(1, min(int(self.chunk_tokens), -(-total // MIN_CHUNKS)))

        mixture = torch.softmax(self.layer_logits, dim=0)
        key_offset = self.key.bias + self.layer_embedding  # [L+1, D]
        # Without autograd, every chunk is stacked into the same buffer (with it, each chunk's
        # stack is kept for the backward pass).
        buffer = None
        if not torch.is_grad_enabled():
            buffer = flat[0].new_empty((min(step, total), len(flat), hidden), dtype=compute_dtype)
        anchors, weights = [], []
        for start in range(0, max(total, 1), step):  # one (empty) chunk when there are no tokens
            pieces = [
                self._prepare(state[start : start + step], layer, compute_dtype) for layer, state in enumerate(flat)
            ]
            count = pieces[0].shape[0]
            stack = torch.stack(pieces, dim=1, out=None if buffer is None else buffer[:count])  # [n, L+1, H]
            with torch.autocast(device_type=device_type, enabled=False):
                mixed = torch.matmul(mixture.to(compute_dtype).expand(count, 1, -1), stack).squeeze(1)
            query = self.query(mixed)
            key_query = query @ self.key.weight.to(query.dtype)  # Wk^T q, [n, H]
            offset = query @ key_offset.to(query.dtype).T  # [n, L+1]
            with torch.autocast(device_type=device_type, enabled=False):
                logits = torch.matmul(stack, key_query.to(compute_dtype).unsqueeze(-1)).squeeze(-1)
                chunk_weights = torch.softmax((logits.float() + offset.float()) * self.scale, dim=-1)
                pooled = torch.matmul(chunk_weights.to(compute_dtype).unsqueeze(1), stack).squeeze(1)
            del stack, pieces
            anchors.append(self.value(pooled))
            weights.append(chunk_weights)
        anchors = anchors[0] if len(anchors) == 1 else torch.cat(anchors)
        weights = weights[0] if len(weights) == 1 else torch.cat(weights)
        return anchors.view(batch, length, anchors.shape[-1]), weights.view(batch, length, len(flat))

    def forward_direct(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference form with per-layer keys and values (memory-hungry; used to test ``forward``)."""
        states = torch.stack(
            [self._prepare(state, layer, torch.float32) for layer, state in enumerate(hidden_states)], dim=2
        )  # [B, T, L+1, H]
        mixture = torch.softmax(self.layer_logits, dim=0)
        query = self.query((states * mixture[:, None]).sum(dim=2))
        keys = self.key(states) + self.layer_embedding
        values = self.value(states)
        weights = torch.softmax(torch.einsum("btd,btld->btl", query, keys) * self.scale, dim=-1)
        return torch.einsum("btl,btlh->bth", weights, values), weights
