"""Entropic optimal transport by log-domain Sinkhorn iterations, batched and masked."""

from __future__ import annotations

import torch


def log_sinkhorn(
    cost: torch.Tensor,
    source_mass: torch.Tensor,
    target_mass: torch.Tensor,
    epsilon: float = 0.1,
    iterations: int = 30,
) -> torch.Tensor:
    """Transport plans P[b] minimising <P, C> - epsilon * H(P) with marginals (a, b).

    Args:
        cost: [batch, n, m] cost matrices.
        source_mass: [batch, n] row marginals; zero entries mark padding and get no mass.
        target_mass: [batch, m] column marginals; zero entries mark unused slots.
        epsilon: entropic regularisation.
        iterations: number of (row, column) scaling rounds.

    Returns:
        [batch, n, m] plans in float32. Columns match ``target_mass`` exactly (the last
        update is a column update); rows converge to ``source_mass``.

    Every batch entry must have at least one row and one column of positive mass.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_kernel = -cost.float() / epsilon
        log_a = _masked_log(source_mass.float())
        log_b = _masked_log(target_mass.float())
        log_u = torch.zeros_like(log_a)
        log_v = torch.zeros_like(log_b)
        for _ in range(iterations):
            log_u = log_a - torch.logsumexp(log_kernel + log_v.unsqueeze(1), dim=2)
            log_v = log_b - torch.logsumexp(log_kernel + log_u.unsqueeze(2), dim=1)
        return torch.exp(log_u.unsqueeze(2) + log_kernel + log_v.unsqueeze(1))


def _masked_log(mass: torch.Tensor) -> torch.Tensor:
    """log(mass) with -inf where mass is zero and finite gradients everywhere."""
    safe = mass.clamp_min(torch.finfo(mass.dtype).tiny).log()
    return torch.where(mass > 0, safe, torch.full_like(safe, float("-inf")))
