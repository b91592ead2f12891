"""Held-out reconstruction: how well a reader regenerates token windows from their contexts, teacher-forced.

The held-out reconstruction rows of ``benchmarks/slot_quality.py`` and the reconstruction probes in
``research/`` read these scores, and draw their Wikipedia windows with :func:`stream_windows`.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from ..prompts import ReconstructionPrompt, answer_end_token_id
from ..reading.reader import Context, Reader
from ..training.data import PretrainCorpus
from ..training.teacher_forcing import target_logits

__all__ = [
    "HELD_OUT_SHARD",
    "mean_window_scores",
    "nats_standard_error",
    "reconstruction_scores",
    "stream_windows",
]

# The reader-adapter runs pretrain on the AB-AD shards; the AA shards fed only the frozen-reader heads of rounds 1-6.
HELD_OUT_SHARD = "wiki/enwiki_2015_AA_shard0.txt.gz"


def stream_windows(
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    length: int,
    shard: str = HELD_OUT_SHARD,
    stream_tokens: int = 2_000_000,
) -> list[list[int]]:
    """``count`` random ``length``-token windows of a Wikipedia shard's token stream (its first ``stream_tokens``,
    plenty for a few hundred windows), drawn as the pretraining sampler draws them, from seed 0."""
    corpus = PretrainCorpus.build(tokenizer, None, stream_tokens, [shard])
    return [example.passage_ids[0] for example in corpus.sample(random.Random(0), count, length, continuation=0)]


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
    keep = _kept_targets(with_end_token)
    losses = torch.cat([window_losses[keep] for window_losses, _ in scores])
    hits = torch.cat([window_hits[keep] for _, window_hits in scores])
    return losses.mean().item(), hits.float().mean().item()


def nats_standard_error(scores: list[tuple[torch.Tensor, torch.Tensor]], with_end_token: bool = True) -> float:
    """Standard error of :func:`mean_window_scores`' nats per token, with the windows as the sample.

    A window's tokens are not independent draws (a passage the slots lose loses most of its tokens), so the
    error is that of a ratio of window totals: the spread of each window's total loss around what the mean
    predicts for its length, over the windows. Needs two windows or more.
    """
    if len(scores) < 2:
        raise ValueError("A standard error over windows needs at least two windows.")
    kept = [window_losses[_kept_targets(with_end_token)].double() for window_losses, _ in scores]
    totals = torch.stack([losses.sum() for losses in kept])
    sizes = torch.tensor([losses.numel() for losses in kept], dtype=torch.float64)
    mean = totals.sum() / sizes.sum()
    residuals = totals - mean * sizes
    count = len(scores)
    return float((residuals.square().sum() * count / (count - 1)).sqrt() / sizes.sum())


def _kept_targets(with_end_token: bool) -> slice:
    """A window's target positions to score: all of them, or all but its end-of-answer token (the last)."""
    return slice(None) if with_end_token else slice(None, -1)
