"""SoftContext: the compressed form of a list of passages, ready for the reader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from .errors import InvalidInputError


@dataclass
class PassageDetails:
    """What the compressor did with one passage (returned with ``return_details=True``)."""

    token_ids: list[int]
    layer_weights: torch.Tensor  # [T, L+1] depth-wise attention of each token over layers
    transport_plans: list[torch.Tensor] = field(default_factory=list)  # per window: [tokens, slots]


@dataclass
class SoftContext:
    """Slots of N passages, padded to the longest: ``slots[i, :slot_counts[i]]`` belong to passage i.

    The reader consumes all passages of a SoftContext, in order, as one context.
    """

    slots: torch.Tensor  # [N, S, H] float32
    mask: torch.Tensor  # [N, S] bool
    token_counts: torch.Tensor  # [N] source tokens per passage
    details: list[PassageDetails] | None = None
    # The reader adapter the slots were made to be read with: its digest, "frozen" (a head trained for the
    # frozen reader) or None (not recorded). The Reader refuses to read them through another one.
    reader_adapter: str | None = None

    def __len__(self) -> int:
        return self.slots.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.slots.shape[-1]

    @property
    def slot_counts(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    @property
    def num_slots(self) -> int:
        return int(self.mask.sum())

    @property
    def num_tokens(self) -> int:
        return int(self.token_counts.sum())

    @property
    def ratio(self) -> float:
        """Achieved compression: source tokens per slot."""
        return self.num_tokens / max(self.num_slots, 1)

    def passage(self, index: int) -> torch.Tensor:
        """Slots of one passage, [S_i, H]."""
        return self.slots[index, : int(self.mask[index].sum())]

    def passages(self) -> list[torch.Tensor]:
        return [self.passage(i) for i in range(len(self))]

    def embeddings(self) -> torch.Tensor:
        """All passages' slots concatenated in order, [sum S_i, H]: what the reader sees."""
        return self.slots[self.mask]

    def select(self, indices: Sequence[int]) -> SoftContext:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return SoftContext.from_passages(
            [self.passage(i) for i in index.tolist()],
            self.token_counts[index].tolist(),
            details=[self.details[i] for i in index.tolist()] if self.details else None,
            reader_adapter=self.reader_adapter,
        )

    def to(self, device: str | torch.device) -> SoftContext:
        return SoftContext(
            self.slots.to(device), self.mask.to(device), self.token_counts.to(device), self.details, self.reader_adapter
        )

    @classmethod
    def from_passages(
        cls,
        passages: Sequence[torch.Tensor],
        token_counts: Sequence[int],
        details: list[PassageDetails] | None = None,
        reader_adapter: str | None = None,
    ) -> SoftContext:
        """Build from per-passage slot tensors [S_i, H] (e.g. read back from a SlotStore)."""
        if len(passages) != len(token_counts):
            raise InvalidInputError(f"{len(passages)} passages but {len(token_counts)} token counts.")
        if not passages:
            return cls.empty(0)
        slots = pad_sequence([p.float() for p in passages], batch_first=True)
        lengths = torch.tensor([p.shape[0] for p in passages], device=slots.device)
        mask = torch.arange(slots.shape[1], device=slots.device).unsqueeze(0) < lengths.unsqueeze(1)
        return cls(slots, mask, torch.tensor(list(token_counts), dtype=torch.long), details, reader_adapter)

    @classmethod
    def concatenate(cls, contexts: Sequence[SoftContext]) -> SoftContext:
        """Join several SoftContexts passage-wise (the reader then reads all of them)."""
        passages = [p for context in contexts for p in context.passages()]
        counts = [c for context in contexts for c in context.token_counts.tolist()]
        adapters = {context.reader_adapter for context in contexts}
        if len(adapters) > 1:
            raise InvalidInputError(
                f"Cannot join slots made for different reader adapters: {sorted(map(str, adapters))}."
            )
        return cls.from_passages(passages, counts, reader_adapter=adapters.pop() if adapters else None)

    @classmethod
    def empty(cls, hidden_size: int) -> SoftContext:
        return cls(
            torch.zeros(0, 0, hidden_size), torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
        )
