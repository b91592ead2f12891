"""Prompt layouts around the context. The context (slots or text) is spliced in as embeddings."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from .backbone import encode_text
from .errors import InvalidInputError

_MARKER = "<<<comprexit-context>>>"
_QUESTION = "<<<comprexit-question>>>"
_ANSWER = "<<<comprexit-answer>>>"


@dataclass(frozen=True)
class QAPrompt:
    """``Context: <context> Question: <q> <instruction>``, inside the chat template when the model has one.

    ``pieces`` returns the token ids before and after the context, so the same prompt
    serves soft slots, raw text and closed-book reading alike. The question is user text: a
    special-token string in it (``"<|im_end|>"``...) is read as ordinary text, never as the
    chat-structure token it names; the chat template's own special tokens stay special.
    """

    instruction: str = "Answer with a short phrase."

    def pieces(self, tokenizer: PreTrainedTokenizerBase, question: str) -> tuple[list[int], list[int]]:
        return self.pieces_many(tokenizer, [question])[0]

    def pieces_many(
        self, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]
    ) -> list[tuple[list[int], list[int]]]:
        """:meth:`pieces` of each question; the prompt is rendered once and the questions are tokenised
        in one tokenizer call (a call per question was most of a QA batch's host time)."""
        body = f"Context:\n{_MARKER}\n\nQuestion: {_QUESTION}\n{self.instruction}"
        before, after = _render_around_context(tokenizer, body, "Answer:")
        fills = [{_QUESTION: question.strip()} for question in questions]
        return list(zip(encode_prompts(tokenizer, before, fills), encode_prompts(tokenizer, after, fills), strict=True))


@dataclass(frozen=True)
class ReconstructionPrompt:
    """``Context: <context> <instruction>`` in the chat template; the target is the context's own text.

    The autoencoding layout of pretraining: the reader must regenerate the compressed tokens from
    the slots, inside the same chat frame as :class:`QAPrompt`, so what it learns to read carries
    over to question answering. The ``question`` argument is ignored (there is none).
    """

    instruction: str = "Repeat the context word for word."

    def pieces(self, tokenizer: PreTrainedTokenizerBase, question: str = "") -> tuple[list[int], list[int]]:
        before, after = _render_around_context(tokenizer, f"Context:\n{_MARKER}\n\n{self.instruction}", "Text:")
        return encode_prompt(tokenizer, before, {}), encode_prompt(tokenizer, after, {})


@dataclass(frozen=True)
class ContinuationPrompt:
    """``BOS <context>`` then the text that follows: the next-token pretraining layout."""

    def pieces(self, tokenizer: PreTrainedTokenizerBase, question: str = "") -> tuple[list[int], list[int]]:
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []), []


def _render_around_context(tokenizer: PreTrainedTokenizerBase, body: str, cue: str) -> tuple[str, str]:
    """The user turn ``body`` rendered as the prompt, cut at the context marker.

    The template is rendered around placeholders, so every special token in it is the template's
    own. Without a chat template: ``BOS body \n cue``.
    """
    if tokenizer.chat_template:
        rendered = _render_chat(tokenizer, tokenizer.chat_template, repr(tokenizer.special_tokens_map), body)
    else:
        rendered = f"{tokenizer.bos_token or ''}{body}\n{cue}"
    before, after = rendered.split(_MARKER, 1)
    return before, after


@functools.lru_cache(maxsize=64)
def _render_chat(tokenizer: PreTrainedTokenizerBase, template: str, special_tokens: str, body: str) -> str:
    """``body`` as a user turn in the tokenizer's chat template. The template and the special tokens it may
    print are part of the key, so a changed tokenizer renders anew. The prompt bodies hold placeholders,
    not the question: the template (Jinja) is rendered once per prompt, not once per question."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
    )


def answer_end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes the reader's answer: the chat template's end of turn, else EOS.

    Training appends it to every target. It is read from the template (the first special token after
    an assistant message) rather than taken from ``tokenizer.eos_token``, which conversions of the
    same model disagree on: the SmolLM2 GGUF loads with EOS ``<|im_end|>`` under transformers 5.24
    and ``<|im_start|>`` under 5.17 (the default backbone's copy now names the config's, but a
    backbone from elsewhere may not).
    """
    if tokenizer.chat_template:
        after = _render_turns(tokenizer).split(_ANSWER, 1)[1]
        for piece, token in _split(after, _special_tokens(tokenizer)):
            if token is not None:
                return tokenizer.convert_tokens_to_ids(piece)
    if tokenizer.eos_token_id is None:
        raise InvalidInputError(
            "The tokenizer has neither a chat template with an end-of-turn token nor an EOS token, so an "
            "answer cannot end; set tokenizer.eos_token."
        )
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None = None) -> frozenset[int]:
    """Tokens at which generation stops: the answer end, EOS, ``generation_eos`` and every special
    token of the chat template's turn layout (a reader that opens a new turn has finished its answer)."""
    extra = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    ids = {answer_end_token_id(tokenizer), tokenizer.eos_token_id, *extra} - {None}
    if tokenizer.chat_template:
        ids.update(
            tokenizer.convert_tokens_to_ids(piece)
            for piece, token in _split(_render_turns(tokenizer), _special_tokens(tokenizer))
            if token is not None
        )
    return frozenset(ids)


def _render_turns(tokenizer: PreTrainedTokenizerBase) -> str:
    """A user turn and an assistant turn (whose content is the answer marker) in the chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": _QUESTION}, {"role": "assistant", "content": _ANSWER}], tokenize=False
    )


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[Any]:
    return [token for token in tokenizer.added_tokens_decoder.values() if token.special]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, template: str, fill: dict[str, str]) -> list[int]:
    """Token ids of ``template`` (trusted prompt text) with each placeholder of ``fill`` replaced by user text.

    The special tokens written in ``template`` (by the chat template or the prompt) are encoded as
    special tokens; special-token strings in the user text are encoded as ordinary text.

    When the user text holds no added-token string, the ids are exactly those of tokenising the
    filled-in text in one call (the tokenisation the reader and the heads were trained with).
    Otherwise the filled-in text is cut at the template's own special tokens, as the tokenizer
    itself cuts at added tokens, and each piece is encoded with ``split_special_tokens=True``.
    """
    return encode_prompts(tokenizer, template, [fill])[0]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, template: str, fills: Sequence[dict[str, str]]
) -> list[list[int]]:
    """:func:`encode_prompt` of ``template`` with each of ``fills``; the ordinary texts (no added-token
    string in the user text) in one tokenizer call, each distinct text once."""
    added = list(tokenizer.added_tokens_decoder.values())
    template_tokens = _tokens_of(template, added)
    wholes: list[str | None] = []  # the filled-in text where one tokenizer call encodes it, else None
    for fill in fills:
        whole = _filled(template, fill)
        ordinary = not any(token.content in value for value in fill.values() for token in added)
        wholes.append(whole if ordinary and _tokens_of(whole, added) == template_tokens else None)
    distinct = list(dict.fromkeys(whole for whole in wholes if whole is not None))
    encoded: dict[str, list[int]] = {}
    if distinct:
        encoded = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"], strict=True))
    return [
        list(encoded[whole]) if whole is not None else _encode_split(tokenizer, template, fill, added)
        for whole, fill in zip(wholes, fills, strict=True)
    ]


def _filled(text: str, fill: dict[str, str]) -> str:
    """``text`` with each placeholder of ``fill`` replaced by its value."""
    if not fill:
        return text
    return _alternatives(tuple(fill)).sub(lambda match: fill[match.group(0)], text)


def _encode_split(
    tokenizer: PreTrainedTokenizerBase, template: str, fill: dict[str, str], added: list[Any]
) -> list[int]:
    """The filled-in template cut at its own special tokens, each text piece encoded with its special-token
    strings read as text."""
    parts = [(_filled(piece, fill) if token is None else piece, token) for piece, token in _split(template, added)]
    ids: list[int] = []
    for index, (piece, token) in enumerate(parts):
        if token is not None:
            ids.append(tokenizer.convert_tokens_to_ids(token.content))
            continue
        # Whitespace next to a token marked rstrip (on its right) or lstrip (on its left) is dropped, as
        # the tokenizer does.
        if index > 0 and getattr(parts[index - 1][1], "rstrip", False):
            piece = piece.lstrip()
        if index + 1 < len(parts) and getattr(parts[index + 1][1], "lstrip", False):
            piece = piece.rstrip()
        if piece:
            ids.extend(encode_text(tokenizer, [piece])[0])
    return ids


def _tokens_of(text: str, added: list[Any]) -> list[str]:
    return [token.content for _, token in _split(text, added) if token is not None]


def _split(text: str, added: list[Any]) -> list[tuple[str, Any]]:
    """``text`` cut into ``(text, None)`` pieces and ``(token text, AddedToken)`` parts (longest token first)."""
    by_content = {token.content: token for token in added if token.content}
    if not by_content:
        return [(text, None)]
    pattern = _alternatives(tuple(by_content))
    parts: list[tuple[str, Any]] = []
    start = 0
    for match in pattern.finditer(text):
        parts.append((text[start : match.start()], None))
        parts.append((match.group(0), by_content[match.group(0)]))
        start = match.end()
    parts.append((text[start:], None))
    return parts


@functools.lru_cache(maxsize=16)
def _alternatives(contents: tuple[str, ...]) -> re.Pattern[str]:
    """A pattern matching any of ``contents``, longest first (built once per set of strings)."""
    return re.compile("|".join(re.escape(content) for content in sorted(contents, key=len, reverse=True)))


# Any layout the reader and the trainer accept: each gives the token ids before and after the context.
Prompt = QAPrompt | ContinuationPrompt | ReconstructionPrompt


def prompt_pieces(
    prompt: Prompt, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """``prompt.pieces`` of each question: each distinct question once, and all of them in one tokenizer
    call where the prompt offers ``pieces_many`` (:meth:`QAPrompt.pieces_many`)."""
    distinct = list(dict.fromkeys(questions))
    many = getattr(prompt, "pieces_many", None)
    pieces = many(tokenizer, distinct) if many is not None else [prompt.pieces(tokenizer, q) for q in distinct]
    by_question = dict(zip(distinct, pieces, strict=True))
    return [by_question[question] for question in questions]
