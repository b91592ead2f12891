"""Cross-entropy through the LM head without holding the logits of every target position at once.

A reconstruction batch at 512 tokens x 192 windows has about 98k target positions; with a 49k-token
vocabulary their logits take 9.7 GB in bf16, and the float32 copy, log-softmax and its gradient that
``F.cross_entropy(logits.float(), labels)`` keeps for the backward pass add about 40 GB more. Here the
logits are made a chunk of rows at a time, in the forward pass to get each row's log-sum-exp and target
logit, and again in the backward pass to get the gradient (one more LM-head product per chunk): the
memory is one chunk's, and the numbers are those of the unchunked loss (the same products in the
weight's precision, the softmax in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ROWS = 4096  # 4096 x 49,152 float32 logits: 0.8 GB


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_rows: int,
    ):
        ctx.hidden_dtype = hidden.dtype
        hidden = hidden.to(weight.dtype)  # what autocast would run the LM head in
        log_normalizers = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        target_logits = torch.empty_like(log_normalizers)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(hidden[rows], weight, bias).float()
            log_normalizers[rows] = torch.logsumexp(logits, dim=-1)
            target_logits[rows] = logits.gather(1, labels[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, bias, labels, log_normalizers)
        ctx.chunk_rows = chunk_rows
        return (log_normalizers - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, weight, bias, labels, log_normalizers = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_bias else None
        scale = grad_loss.float() / hidden.shape[0]
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # d(mean loss)/d(logits) = (softmax - one_hot(label)) / rows, times the incoming gradient.
            grad_logits = torch.exp(F.linear(hidden[rows], weight, bias).float() - log_normalizers[rows, None])
            grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), labels[rows]] -= 1
            grad_logits *= scale
            if need_bias:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                grad_weight += (grad_logits.T @ hidden[rows]).float()
        return (
            grad_hidden.to(ctx.hidden_dtype) if need_hidden else None,
            grad_weight.to(weight.dtype) if need_weight else None,
            grad_bias.to(bias.dtype) if need_bias else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Mean cross-entropy of ``F.linear(hidden, weight, bias)`` [N, V] against ``labels`` [N], ``chunk_rows``
    rows at a time.

    Equals ``F.cross_entropy(F.linear(hidden, weight, bias).float(), labels)`` with the product in ``weight``'s
    dtype (as under the backbone's autocast); every label must be a vocabulary index (no ignored rows:
    the trainer passes only the positions that predict a target).
    """
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N]; got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("linear_cross_entropy needs at least one target position.")
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows)
