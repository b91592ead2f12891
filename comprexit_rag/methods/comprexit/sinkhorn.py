"""Entropic optimal transport by Sinkhorn iterations, batched and masked.

:func:`sinkhorn` picks between two forms of the same iterations: the scaling form (two
batched matrix-vector products per round; fast on GPUs) where it is numerically safe, else
the log-domain form :func:`log_sinkhorn` (stable for any cost range, but a dozen small
kernels per round).
"""

from __future__ import annotations

import torch
from torch import Tensor

# The scaling form holds K = exp(-C / epsilon) and scalings u, v of up to about exp(max C / epsilon)
# in float32 (largest exponent ~88); the backward pass of u = a / (K v) forms u / (K v), up to about
# exp(2 max C / epsilon). Forward passes stayed finite and within 3e-6 of the log-domain plans up to
# max C / epsilon = 85 on adversarial costs, but gradients overflowed from about 45: the scaling form
# is used up to this bound, with a margin (the default, 1 - cosine costs and epsilon = 0.1, is 20).
MAX_SCALING_EXPONENT = 30.0


def sinkhorn(
    cost: torch.Tensor,
    source_mass: torch.Tensor,
    target_mass: torch.Tensor,
    epsilon: float = 0.1,
    iterations: int = 30,
    max_cost: float | None = None,
) -> torch.Tensor:
    """Same plans as :func:`log_sinkhorn` (within float32 rounding), by the faster form that is safe.

    Args:
        cost, source_mass, target_mass, epsilon, iterations: as for :func:`log_sinkhorn`.
            Costs must be non-negative for the scaling form to be chosen.
        max_cost: an upper bound on the costs known in advance (e.g. 2 for 1 - cosine). With it the
            choice reads no tensor values (no device synchronisation); without it ``cost`` is read.

    The scaling form is used when max(C) / epsilon <= ``MAX_SCALING_EXPONENT`` and float32 matrix
    products are exact float32 (on CUDA, TF32 off); otherwise the log-domain form is.
    """
    if iterations < 1 or not _fp32_matmul_is_ieee(cost.device):
        return log_sinkhorn(cost, source_mass, target_mass, epsilon, iterations)
    if max_cost is None:
        if cost.numel() == 0:
            return log_sinkhorn(cost, source_mass, target_mass, epsilon, iterations)
        low, high = torch.aminmax(cost.detach().float())
        if float(low) < 0:
            return log_sinkhorn(cost, source_mass, target_mass, epsilon, iterations)
        max_cost = float(high)
    if not max_cost / epsilon <= MAX_SCALING_EXPONENT:  # also catches inf / nan
        return log_sinkhorn(cost, source_mass, target_mass, epsilon, iterations)
    return scaling_sinkhorn(cost, source_mass, target_mass, epsilon, iterations)


def scaling_sinkhorn(
    cost: Tensor, source_mass: Tensor, target_mass: Tensor, epsilon: float = 0.1, iterations: int = 30
) -> Tensor:
    """The iterations of :func:`log_sinkhorn` in the scaling domain: u = a / (K v), v = b / (K^T u).

    K = exp(-C / epsilon) must not underflow where it matters: use it for costs in
    [0, MAX_SCALING_EXPONENT * epsilon] (:func:`sinkhorn` checks). Rows and columns of zero mass
    get exactly zero mass. Same arguments and result as :func:`log_sinkhorn`.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        kernel = torch.exp(cost.float() / -epsilon)  # [B, n, m]
        kernel_t = kernel.transpose(1, 2)
        # Zero masses are structural (padding), as in the log domain: no gradient flows into them.
        a = _structural_zeros(source_mass.float()).unsqueeze(2)  # [B, n, 1]
        b = _structural_zeros(target_mass.float()).unsqueeze(2)  # [B, m, 1]
        v = (b > 0).float()  # unused columns start (and stay) empty, so they never touch the rows
        u = a
        for _ in range(iterations):
            u = a / torch.bmm(kernel, v)
            v = b / torch.bmm(kernel_t, u)
        return u * kernel * v.transpose(1, 2)


def log_sinkhorn(
    cost: Tensor, source_mass: Tensor, target_mass: Tensor, epsilon: float = 0.1, iterations: int = 30
) -> Tensor:
    """Transport plans P[b] minimising <P, C> - epsilon * H(P) with marginals (a, b).

    Args:
        cost: [batch, n, m] cost matrices.
        source_mass: [batch, n] row marginals; zero entries mark padding and get no mass.
        target_mass: [batch, m] column marginals; zero entries mark unused slots.
        epsilon: entropic regularisation.
        iterations: number of (row, column) scaling rounds.

    Returns:
        [batch, n, m] plans in float32. Columns match ``target_mass`` exactly (the last
        update is a column update); rows approach ``source_mass`` as iterations grow. At the
        head's settings (epsilon 0.1, 30 rounds, costs in [0, 2]) they are approximate: on random
        problems up to 24 x 12 the worst row error was 3.7e-2 (median 5e-5); 200 rounds give 5e-4.
        The head is trained with these settings, so the approximation is part of the model.

    Every batch entry must have at least one row and one column of positive mass.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_kernel = -cost.float() / epsilon
        log_a = _masked_log(source_mass.float())
        log_b = _masked_log(target_mass.float())
        log_u = torch.zeros_like(log_a)
        # Unused columns start at -inf: from 0 their costs would leak into the first row update.
        log_v = torch.zeros_like(log_b).masked_fill(target_mass <= 0, float("-inf"))
        for _ in range(iterations):
            log_u = log_a - torch.logsumexp(log_kernel + log_v.unsqueeze(1), dim=2)
            log_v = log_b - torch.logsumexp(log_kernel + log_u.unsqueeze(2), dim=1)
        return torch.exp(log_u.unsqueeze(2) + log_kernel + log_v.unsqueeze(1))


def _fp32_matmul_is_ieee(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` are computed in float32 (not TF32)."""
    return device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32


def _structural_zeros(mass: torch.Tensor) -> torch.Tensor:
    """``mass`` with the gradient of its zero entries cut (like :func:`_masked_log`'s -inf)."""
    return torch.where(mass > 0, mass, torch.zeros_like(mass))


def _masked_log(mass: torch.Tensor) -> torch.Tensor:
    """log(mass) with -inf where mass is zero and finite gradients everywhere."""
    safe = mass.clamp_min(torch.finfo(mass.dtype).tiny).log()
    return torch.where(mass > 0, safe, torch.full_like(safe, float("-inf")))
