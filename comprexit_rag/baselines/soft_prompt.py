"""Prompt tuning on the uncompressed context: a few learned vectors placed before the raw text.

This is the "full-tuned" baseline: the reader sees the whole context, plus soft tokens
trained on the same QA data and budget as the heads (which, like the heads, teach the
reader to answer with a short phrase).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..backbone import Backbone, BackboneFingerprint
from ..checkpoint import fingerprint_from_metadata, load_into, load_state_dict, read_metadata, save_module
from ..errors import CheckpointError
from ..head import PRETRAINED_DIR

CHECKPOINT_KIND = "soft-prompt"
DEFAULT_SOFT_PROMPT = PRETRAINED_DIR / "soft-prompt-smollm2-135m"
INIT_TEXT = "Read the context and answer the question with a short phrase copied from it."


class SoftPrompt(nn.Module):
    """``num_tokens`` learned input embeddings, initialised from the embeddings of a short instruction."""

    def __init__(self, num_tokens: int, hidden_size: int, fingerprint: BackboneFingerprint) -> None:
        super().__init__()
        self.fingerprint = fingerprint
        self.embeddings = nn.Parameter(torch.zeros(num_tokens, hidden_size))

    @classmethod
    def for_backbone(cls, backbone: Backbone, num_tokens: int = 16) -> SoftPrompt:
        prompt = cls(num_tokens, backbone.hidden_size, backbone.fingerprint).to(backbone.device)
        ids = backbone.tokenizer(INIT_TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ids = ids.repeat(-(-num_tokens // len(ids)))[:num_tokens]
        with torch.no_grad():
            prompt.embeddings.copy_(backbone.embed(ids).float())
        return prompt

    def context(self, backbone: Backbone, text: str) -> torch.Tensor:
        """The soft tokens followed by the embedded raw context text, [P + n, H]."""
        ids = torch.tensor(backbone.tokenize([text])[0], dtype=torch.long)  # special-token strings read as text
        return torch.cat([self.embeddings.to(backbone.dtype), backbone.embed(ids)])

    def save_pretrained(self, directory: str | os.PathLike, **extra) -> Path:
        config = {"num_tokens": self.embeddings.shape[0], "hidden_size": self.embeddings.shape[1]}
        return save_module(
            directory, self, kind=CHECKPOINT_KIND, config=config, fingerprint=self.fingerprint, extra=extra
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike | None = None) -> SoftPrompt:
        directory = Path(directory) if directory is not None else DEFAULT_SOFT_PROMPT
        metadata = read_metadata(directory, CHECKPOINT_KIND)
        try:
            config = metadata["config"]
            prompt = cls(config["num_tokens"], config["hidden_size"], fingerprint_from_metadata(metadata))
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{directory}/config.json has an invalid soft-prompt config: {error}") from error
        load_into(prompt, load_state_dict(directory), directory)
        return prompt
