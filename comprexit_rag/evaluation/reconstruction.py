"""Held-out reconstruction: how well a reader regenerates token windows from their contexts, teacher-forced.

The held-out reconstruction rows of ``benchmarks/slot_quality.py`` and the per-token probe
``research/reconstruction_by_token.py`` both read these scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prompts import ReconstructionPrompt, answer_end_token_id
from ..reading.reader import Context, Reader
from ..training.teacher_forcing import target_logits

__all__ = ["mean_window_scores", "reconstruction_scores"]


@torch.no_grad()
def reconstruction_scores(
    reader: Reader, windows: list[list[int]], contexts: list[Context], batch_size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per window: each target token's loss (nats, float32) and whether the reader's top token is it (bool).

    The targets are the window's tokens, then the end-of-answer token (the last entry), each predicted
    from its context under the reconstruction prompt. Tensors are on the CPU.
    """
    stop = answer_end_token_id(reader.backbone.tokenizer)
    scores = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        inputs = reader.build_inputs(
            [""] * len(batch),
            contexts[start : start + batch_size],
            [[*ids, stop] for ids in batch],
            prompt=ReconstructionPrompt(),
            padding_side="right",
        )
        logits, labels = target_logits(reader, inputs)
        losses = F.cross_entropy(logits.float(), labels, reduction="none").cpu()
        hits = (logits.argmax(-1) == labels).cpu()
        # Target positions come row by row, each row's in order.
        sizes = [len(ids) + 1 for ids in batch]
        scores.extend(zip(losses.split(sizes), hits.split(sizes), strict=True))
    return scores


def mean_window_scores(
    scores: list[tuple[torch.Tensor, torch.Tensor]], with_end_token: bool = True
) -> tuple[float, float]:
    """Mean nats per token and top-1 accuracy over all windows' target tokens (each window weighs by its
    length). ``with_end_token=False`` leaves each window's end-of-answer token out: the text's tokens only."""
    keep = slice(None) if with_end_token else slice(None, -1)
    losses = torch.cat([window_losses[keep] for window_losses, _ in scores])
    hits = torch.cat([window_hits[keep] for _, window_hits in scores])
    return losses.mean().item(), hits.float().mean().item()
