"""ComprExITCompressor: texts -> SoftContext, with a frozen backbone and a trained head."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .checkpoint import check_fingerprint
from .config import validate_ratio
from .head import ComprExITHead
from .segments import check_texts, iter_batches, split_into_segments
from .soft_context import PassageDetails, SoftContext

logger = logging.getLogger(__name__)


def autocast_for(backbone: Backbone) -> contextlib.AbstractContextManager:
    """Run trainable modules in the backbone's low precision where it has one."""
    if backbone.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=backbone.device.type, dtype=backbone.dtype)
    return contextlib.nullcontext()


class ComprExITCompressor:
    """Compress passages into soft slots. The question is never seen, so slots can be stored.

    >>> compressor = ComprExITCompressor.from_pretrained()
    >>> soft = compressor.compress(["Paris is the capital of France."], ratio=4)
    >>> soft.slot_counts, soft.ratio
    """

    def __init__(self, backbone: Backbone, head: ComprExITHead, batch_size: int = 8) -> None:
        check_fingerprint(head.fingerprint, backbone.fingerprint, "This ComprExIT head")
        self.backbone = backbone
        self.head = head.to(backbone.device).eval()
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        head: str | os.PathLike | ComprExITHead | None = None,
        backbone: str | os.PathLike | Backbone | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> ComprExITCompressor:
        """Defaults: the embedded SmolLM2 backbone and the head shipped for it."""
        if not isinstance(backbone, Backbone):
            backbone = Backbone.from_pretrained(backbone, device=device)
        if not isinstance(head, ComprExITHead):
            head = ComprExITHead.from_pretrained(head)
        return cls(backbone, head, batch_size=batch_size)

    @property
    def config(self):
        return self.head.config

    @property
    def fingerprint(self) -> str:
        """Identifies backbone + head weights; slot stores key their entries on it."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.backbone.fingerprint.digest.encode())
            for name, tensor in sorted(self.head.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = f"comprexit-{digest.hexdigest()[:16]}"
        return self._fingerprint

    def compress(
        self,
        texts: str | Sequence[str],
        *,
        ratio: int | None = None,
        batch_size: int | None = None,
        return_details: bool = False,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Compress each passage into ceil(tokens / ratio) slots (per 128-token window).

        Passages longer than ``segment_length`` tokens are split into segments that are
        compressed independently; their slots are concatenated in order. Nothing is truncated.
        """
        texts = check_texts(texts)
        if not texts:
            return SoftContext.empty(self.backbone.hidden_size)
        return self.compress_token_ids(
            self.backbone.tokenize(texts),
            ratio=ratio,
            batch_size=batch_size,
            return_details=return_details,
            show_progress=show_progress,
        )

    @torch.no_grad()
    def compress_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        ratio: int | None = None,
        batch_size: int | None = None,
        return_details: bool = False,
        show_progress: bool | None = None,
    ) -> SoftContext:
        """Like :meth:`compress`, for passages that are already tokenised (no special tokens)."""
        ratio = validate_ratio(ratio or self.config.ratio, self.config.window)
        segments = split_into_segments(token_ids, self.config.segment_length)
        batch_size = batch_size or self.batch_size
        # pieces[passage][segment position] -> slots of that segment
        pieces: list[dict[int, torch.Tensor]] = [{} for _ in token_ids]
        details: list[dict[int, PassageDetails]] = [{} for _ in token_ids]
        batches = iter_batches(segments, batch_size, self.backbone.bos_token_id)
        total = -(-len(segments) // batch_size)
        show = show_progress if show_progress is not None else total > 4
        for batch in tqdm(batches, total=total, desc="Compressing", unit="batch", disable=not show):
            hidden_states = self.backbone.hidden_states(batch.input_ids, batch.attention_mask)
            with autocast_for(self.backbone):
                output = self.head(hidden_states, batch.anchor_mask, ratio=ratio)
            for row, segment in enumerate(batch.segments):
                slots = output.slots[row, output.slot_mask[row]].float()
                pieces[segment.passage][segment.position] = slots
                if return_details:
                    details[segment.passage][segment.position] = _segment_details(
                        output, row, batch.anchor_mask[row], segment.token_ids
                    )

        passages = [torch.cat([part[k] for k in sorted(part)]) for part in pieces]
        merged = [_merge_details([part[k] for k in sorted(part)]) for part in details] if return_details else None
        return SoftContext.from_passages(passages, [len(ids) for ids in token_ids], details=merged)


def _segment_details(output, row: int, anchor_mask: torch.Tensor, token_ids: Sequence[int]) -> PassageDetails:
    windows = (output.window_owner == row).nonzero().flatten().tolist()
    plans = []
    for window in windows:
        tokens = int(output.window_mask[window].sum())
        plan = output.transport_plans[window, :tokens]
        plans.append(plan[:, plan.sum(dim=0) > 0].cpu())
    layer_weights = output.layer_weights[row, anchor_mask.to(output.layer_weights.device)].cpu()
    return PassageDetails(list(token_ids), layer_weights, plans)


def _merge_details(parts: list[PassageDetails]) -> PassageDetails:
    return PassageDetails(
        token_ids=[t for part in parts for t in part.token_ids],
        layer_weights=torch.cat([part.layer_weights for part in parts]),
        transport_plans=[plan for part in parts for plan in part.transport_plans],
    )
