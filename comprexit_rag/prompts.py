"""Prompt layouts around the context. The context (slots or text) is spliced in as embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_MARKER = "<<<comprexit-context>>>"


@dataclass(frozen=True)
class QAPrompt:
    """``Context: <context> Question: <q> <instruction>``, inside the chat template when the model has one.

    ``pieces`` returns the token ids before and after the context, so the same prompt
    serves soft slots, raw text and closed-book reading alike.
    """

    instruction: str = "Answer with a short phrase."

    def pieces(self, tokenizer: PreTrainedTokenizerBase, question: str) -> tuple[list[int], list[int]]:
        body = f"Context:\n{_MARKER}\n\nQuestion: {question.strip()}\n{self.instruction}"
        if tokenizer.chat_template:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
        else:
            rendered = f"{tokenizer.bos_token or ''}{body}\nAnswer:"
        # The first marker is ours; a question that happens to contain the marker text stays intact.
        before, after = rendered.split(_MARKER, 1)
        encode = tokenizer(add_special_tokens=False, text=[before, after])["input_ids"]
        return encode[0], encode[1]


@dataclass(frozen=True)
class ContinuationPrompt:
    """``BOS <context>`` then the text that follows: the next-token pretraining layout."""

    def pieces(self, tokenizer: PreTrainedTokenizerBase, question: str = "") -> tuple[list[int], list[int]]:
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []), []
