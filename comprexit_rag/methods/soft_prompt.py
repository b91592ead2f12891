"""Prompt tuning on the uncompressed context: a few learned vectors placed before the raw text.

This is the "full-tuned" baseline: the reader sees the whole context, plus soft tokens
trained on the same QA data and budget as the heads (which, like the heads, teach the
reader to answer with a short phrase).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone, BackboneFingerprint
from ..checkpoint import PRETRAINED_DIR, CheckpointConfig, CheckpointedModule
from ..validation import check_int_field

CHECKPOINT_KIND = "soft-prompt"
DEFAULT_SOFT_PROMPT = PRETRAINED_DIR / "soft-prompt-smollm2-135m"
INIT_TEXT = "Read the context and answer the question with a short phrase copied from it."


@dataclass
class SoftPromptConfig(CheckpointConfig):
    num_tokens: int
    hidden_size: int

    def __post_init__(self) -> None:
        check_int_field(self, "num_tokens")
        check_int_field(self, "hidden_size")


class SoftPrompt(CheckpointedModule):
    """``num_tokens`` learned input embeddings, initialised from the embeddings of a short instruction."""

    checkpoint_kind = CHECKPOINT_KIND
    config_class = SoftPromptConfig
    description = "soft-prompt"
    default_checkpoint = DEFAULT_SOFT_PROMPT

    def __init__(self, num_tokens: int, hidden_size: int, fingerprint: BackboneFingerprint) -> None:
        super().__init__(None, fingerprint)  # the config is read off the embeddings
        self.embeddings = nn.Parameter(torch.zeros(num_tokens, hidden_size))

    @classmethod
    def for_backbone(cls, backbone: Backbone, num_tokens: int = 16) -> SoftPrompt:
        prompt = cls(num_tokens, backbone.hidden_size, backbone.fingerprint).to(backbone.device)
        ids = backbone.tokenizer(INIT_TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ids = ids.repeat(-(-num_tokens // len(ids)))[:num_tokens]
        with torch.no_grad():
            prompt.embeddings.copy_(backbone.embed(ids).float())
        return prompt

    @classmethod
    def from_config(cls, config: SoftPromptConfig, fingerprint: BackboneFingerprint) -> SoftPrompt:
        return cls(config.num_tokens, config.hidden_size, fingerprint)

    @property
    def config(self) -> SoftPromptConfig:
        """Read off the embeddings, so it can never disagree with them."""
        return SoftPromptConfig(*self.embeddings.shape)

    def context(self, backbone: Backbone, text: str) -> torch.Tensor:
        """The soft tokens followed by the embedded raw context text, [P + n, H]."""
        ids = torch.tensor(backbone.tokenize([text])[0], dtype=torch.long)  # special-token strings read as text
        return torch.cat([self.embeddings.to(backbone.dtype), backbone.embed(ids)])
