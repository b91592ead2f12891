"""Reader: the frozen LLM answering a question from soft slots, raw text, or nothing at all."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..backbone import Backbone, cache_keyword, returned_cache
from ..errors import InvalidInputError
from ..prompts import QAPrompt, prompt_pieces, stop_token_ids
from ..soft_context import SoftContext
from ..validation import check_positive_int, check_text
from .adapter import ReaderAdapter
from .batch_layout import BatchLayout
from .pairing import require_adapter

logger = logging.getLogger(__name__)

# A context is compressed slots, raw text (one string or several passages), ready-made
# embeddings [n, H] (e.g. learned soft tokens + text), or None for closed-book reading.
Context = SoftContext | str | Sequence[str] | torch.Tensor | None


@dataclass
class ReaderBatch:
    """Left-padded reader inputs; ``labels`` is set when targets were given (teacher forcing)."""

    inputs_embeds: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor | None = None  # [B, T], IGNORE_INDEX outside the targets
    context_lengths: list[int] | None = None  # context vectors per example (slots or text tokens)
    slot_mask: torch.Tensor | None = None  # [B, T] bool, true where the context was given as vectors (slots)
    prompt_prefix: list[int] | None = None  # token ids every row starts with (the prompt before the context)
    # Teacher forcing, from the host-side layout: the flat positions (into [B * T]) that predict a target
    # token, row by row, and those tokens. Selecting with them needs no read of the device.
    target_positions: torch.Tensor | None = None  # [N]
    target_ids: torch.Tensor | None = None  # [N]
    # The flat positions after the context (the prompt's rest, the question, the targets), row by row: the
    # same tokens whatever the context was, so two readings of a batch line up there (hidden-state distillation).
    after_positions: torch.Tensor | None = None  # [M]


class Reader:
    """Greedy (by default) generation through ``inputs_embeds`` with a KV cache.

    >>> reader = Reader(backbone)
    >>> reader.generate("Who wrote Hamlet?", soft_context)        # from slots
    >>> reader.generate("Who wrote Hamlet?", ["passage one", "passage two"])  # from raw text

    Length policy: prompt + question + context + ``max_new_tokens`` must fit the backbone's
    ``max_position_embeddings``; nothing is truncated silently (a cut question or context changes
    the answer unnoticed). A question that does not fit raises :class:`InvalidInputError` saying
    how many positions each part takes; :meth:`context_budget` tells beforehand how much context
    fits with a question.

    Reader adapter: slots of a head trained with a reader LoRA are read through that adapter
    (:class:`~comprexit_rag.reading.adapter.ReaderAdapter`). By default the reader uses the adapter attached
    to its backbone (loading such a head attaches it), ``adapter=None`` reads with the frozen
    weights, and slots made for another adapter raise :class:`AdapterMismatchError`.

    Thread safety: :meth:`generate` and :meth:`stream` may be called from several threads at
    once; every forward pass and tokenizer call holds the backbone's lock (see
    :class:`~comprexit_rag.backbone.Backbone`), so answers equal those of sequential calls.
    """

    def __init__(
        self,
        backbone: Backbone,
        prompt: QAPrompt | None = None,
        max_new_tokens: int = 20,
        adapter: ReaderAdapter | Literal["attached"] | None = "attached",
    ) -> None:
        self.backbone = backbone
        self.adapter = attached_adapter(backbone) if adapter == "attached" else adapter
        if self.adapter is not None and self.adapter.backbone is not backbone:
            raise InvalidInputError(
                "The reader adapter is attached to another backbone object; use one backbone for both."
            )
        self.prompt = prompt or QAPrompt()
        self.max_new_tokens = check_positive_int(max_new_tokens, "max_new_tokens")
        self.stop_token_ids = stop_token_ids(backbone.tokenizer, backbone.model.generation_config.eos_token_id)
        # KV cache of the prompt before the context (system prompt, "Context:"), the same for every question.
        self._prefix_cache: tuple[tuple, Cache] | None = None
        # Greedy decoding reads the logits of the last position only: the prefill need not project every
        # position onto the vocabulary (on a CPU that is a quarter of a 700-token prefill).
        forward = inspect.signature(backbone.model.forward).parameters
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self._cache_keyword = cache_keyword(backbone.model)
        self._through: dict[ReaderAdapter | None, Reader] = {self.adapter: self}  # see through()
        self._through_lock = threading.Lock()

    def through(self, adapter: ReaderAdapter | None) -> Reader:
        """This reader (backbone, prompt, length limit) reading through ``adapter`` (``None``: the frozen
        weights): itself when it already does, else a reader made once and kept.

        For slots made for another adapter than this reader's, e.g. a query-aware merger's beside a head's.
        """
        with self._through_lock:
            reader = self._through.get(adapter)
            if reader is None:
                reader = Reader(self.backbone, self.prompt, self.max_new_tokens, adapter=adapter)
                self._through[adapter] = reader
            return reader

    def context_embeddings(self, context: Context) -> torch.Tensor:
        """The context as input embeddings [n, H] in the model's dtype."""
        part = self._context_part(context)
        if isinstance(part, torch.Tensor):
            return self._context_vectors([part])
        ids = self.backbone.tokenize([part])[0] if part else []  # special-token strings read as text
        return self.backbone.embed(torch.tensor(ids, dtype=torch.long))

    def _context_part(self, context: Context) -> str | torch.Tensor:
        """The context as text to tokenise ("" for none) or as vectors [n, H] (shape and dtype checked;
        their values are checked by :meth:`_context_vectors`, once per batch)."""
        backbone = self.backbone
        if context is None:
            return ""
        if isinstance(context, SoftContext):
            if context.reader_adapter is not None:
                require_adapter(context.reader_adapter, self.adapter, "These slots")
            context = context.embeddings()
        if isinstance(context, torch.Tensor):
            if context.dim() != 2 or context.shape[-1] != backbone.hidden_size:
                raise InvalidInputError(
                    f"Context embeddings must be [n, {backbone.hidden_size}] for this backbone (hidden size "
                    f"{backbone.hidden_size}), got {tuple(context.shape)}; were the slots made for another backbone?"
                )
            if not context.is_floating_point():
                raise InvalidInputError(f"Context embeddings must be a float tensor, got {context.dtype}.")
            return context
        if isinstance(context, str):
            return check_text(context, "The context") if context.strip() else context  # "" reads as no context
        return "\n\n".join(_check_strings(context, "context passage"))

    def _context_vectors(self, contexts: list[torch.Tensor], check_values: bool = True) -> torch.Tensor:
        """Context vectors of a batch, concatenated [sum n_i, H] in the model's dtype and on its device.

        Any float dtype and any device are accepted. No detach: training backpropagates through these
        vectors into the head. With ``check_values`` their values are checked once for the whole batch
        (one read of the device).
        """
        backbone = self.backbone
        if not contexts:
            return torch.zeros(0, backbone.hidden_size, device=backbone.device, dtype=backbone.dtype)
        device = backbone.device  # a property that walks the model's parameters: read it once
        on_device = [context.to(device) for context in contexts]
        # Mixed float dtypes promote to the widest, exactly, so the conversion below rounds each value once.
        joined = on_device[0] if len(on_device) == 1 else torch.cat(on_device)
        converted = joined.to(backbone.dtype)
        if check_values and not bool(torch.isfinite(converted).all()):
            if not bool(torch.isfinite(joined).all()):
                raise InvalidInputError("Context embeddings contain NaN or inf; recompress the passages.")
            raise InvalidInputError(
                f"Context embeddings overflow the model's dtype {backbone.dtype}; recompress the passages."
            )
        return converted

    def build_inputs(
        self,
        questions: Sequence[str],
        contexts: Sequence[Context],
        targets: Sequence[Sequence[int]] | None = None,
        prompt: QAPrompt | None = None,
        padding_side: str = "left",
        check_values: bool = True,
    ) -> ReaderBatch:
        """Embed ``prompt-before + context + prompt-after (+ target)`` per example.

        Generation needs left padding. Training uses right padding: a left-padded row's first
        positions attend to nothing, and in bf16 attention kernels those fully masked rows turn
        into NaNs that reach every gradient in the backward pass (NaN * 0 is NaN).

        The whole batch is laid out on the host (token ids, masks, labels, where the vectors go), sent
        to the device in one copy and embedded in one call; the context vectors of all examples are
        then written into their positions in one operation. Nothing is done on the device per example:
        at training batch sizes that per-example work was most of a step's host time.

        ``check_values``: refuse context vectors with NaN or inf, or that overflow the model's dtype
        (one read of the device for the batch).
        """
        if len(questions) != len(contexts):
            raise InvalidInputError(f"{len(questions)} questions but {len(contexts)} contexts.")
        if targets is not None and len(targets) != len(questions):
            raise InvalidInputError(f"{len(questions)} questions but {len(targets)} targets.")
        prompt = prompt or self.prompt
        backbone = self.backbone
        pieces = prompt_pieces(prompt, backbone.tokenizer, questions)
        parts = [self._context_part(context) for context in contexts]
        texts = [part for part in parts if isinstance(part, str) and part]
        text_ids = iter(backbone.tokenize(texts) if texts else [])  # one tokenizer call for all text contexts
        vectors = [part for part in parts if isinstance(part, torch.Tensor)]

        layout = BatchLayout()
        for index, ((before, after), part) in enumerate(zip(pieces, parts, strict=True)):
            target = targets[index] if targets is not None else []
            context = part.shape[0] if isinstance(part, torch.Tensor) else next(text_ids) if part else []
            layout.add(before, context, after, target)
        placed = layout.place(padding_side, backbone.device)

        # Padding and vector positions read zeros; the vectors are then written into theirs.
        embeds = backbone.embed(placed.token_ids).masked_fill(~placed.text_mask.unsqueeze(-1), 0)
        if vectors:
            values = self._context_vectors(vectors, check_values)
            flat = embeds.view(-1, embeds.shape[-1]).index_copy(0, placed.vector_index, values)
            embeds = flat.view(embeds.shape)
        with_targets = targets is not None
        return ReaderBatch(
            embeds,
            placed.attention_mask,
            placed.position_ids,
            placed.labels if with_targets else None,
            context_lengths=layout.context_lengths,
            slot_mask=placed.slot_mask,
            prompt_prefix=layout.prompt_prefix(),
            target_positions=placed.target_positions if with_targets else None,
            target_ids=placed.target_ids if with_targets else None,
            after_positions=placed.after_positions,
        )

    def reading(self, slot_mask: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
        """The reader adapter switched on (if any) for the forward passes inside; hold the backbone's lock."""
        return self.adapter.reading(slot_mask) if self.adapter is not None else contextlib.nullcontext()

    def generate(
        self,
        question: str | Sequence[str],
        context: Context | Sequence[Context] = None,
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
    ) -> str | list[str]:
        """Answer one question (returns a str) or a list of questions with one context each."""
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        check_positive_int(batch_size, "batch_size")
        if isinstance(question, str):
            return self.generate([question], [context], max_new_tokens=max_new_tokens)[0]
        questions = _check_strings(question, "question")
        if context is None:
            contexts: list[Context] = [None] * len(questions)
        elif isinstance(context, str | SoftContext | torch.Tensor) or not isinstance(context, Sequence):
            raise InvalidInputError(
                f"With a list of questions, pass a list holding one context per question, not a "
                f"{type(context).__name__}."
            )
        else:
            contexts = list(context)
        if len(contexts) != len(questions):
            raise InvalidInputError(f"{len(questions)} questions but {len(contexts)} contexts; pass one per question.")
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            with self.backbone.lock:
                batch = self.build_inputs(questions[start : start + batch_size], contexts[start : start + batch_size])
            self._check_fits(batch, max_new_tokens, first=start)
            tokens = [step for step in self._greedy(batch, max_new_tokens)]
            generated = torch.stack(tokens, dim=1) if tokens else torch.zeros(len(batch.inputs_embeds), 0)
            answers.extend(self._decode(row) for row in generated.tolist())
        return answers

    def stream(self, question: str, context: Context = None, *, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the answer to one question piece by piece as it is generated."""
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        with self.backbone.lock:
            batch = self.build_inputs(_check_strings([question], "question"), [context])
        self._check_fits(batch, max_new_tokens)
        produced: list[int] = []
        text = ""
        for step in self._greedy(batch, max_new_tokens):
            produced.append(int(step[0]))
            new_text = self._decode(produced)
            if new_text.startswith(text) and len(new_text) > len(text):
                yield new_text[len(text) :]
                text = new_text

    def context_budget(self, question: str, max_new_tokens: int | None = None) -> int | None:
        """How many context vectors (slots or text tokens) fit with ``question`` and the answer budget.

        ``None`` when the backbone declares no maximum length.

        Raises:
            InvalidInputError: the question is not a non-empty string, or the prompt, the question
                and ``max_new_tokens`` alone exceed the backbone's maximum length.
        """
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        question = _check_strings([question], "question")[0]
        limit = self.backbone.max_positions
        if limit is None:
            return None
        with self.backbone.lock:
            before, after = self.prompt.pieces(self.backbone.tokenizer, question)
        prompt = len(before) + len(after)
        if prompt + max_new_tokens > limit:
            raise InvalidInputError(self._too_long(0, prompt, 0, max_new_tokens, limit))
        return limit - prompt - max_new_tokens

    def _max_new_tokens(self, value: int | None) -> int:
        return self.max_new_tokens if value is None else check_positive_int(value, "max_new_tokens")

    def _check_fits(self, batch: ReaderBatch, max_new_tokens: int, first: int = 0) -> None:
        """Refuse rows whose prompt + context + answer budget exceed the backbone's positions."""
        limit = self.backbone.max_positions
        if limit is None:
            return
        lengths = batch.attention_mask.sum(dim=1).tolist()
        contexts = batch.context_lengths or [0] * len(lengths)
        for row, (length, context) in enumerate(zip(lengths, contexts, strict=True)):
            if length + max_new_tokens > limit:
                raise InvalidInputError(self._too_long(first + row, length - context, context, max_new_tokens, limit))

    def _too_long(self, index: int, prompt: int, context: int, max_new_tokens: int, limit: int) -> str:
        return (
            f"Question {index} does not fit the reader: prompt and question take {prompt} tokens, the context "
            f"{context} and the answer up to {max_new_tokens}, {prompt + context + max_new_tokens} positions in all, "
            f"but {self.backbone.name} reads at most {limit}. Shorten the question, give less context (smaller k, "
            "higher ratio) or lower max_new_tokens."
        )

    @torch.no_grad()
    def _greedy(self, batch: ReaderBatch, max_new_tokens: int) -> Iterator[torch.Tensor]:
        """Yield the next token of every sequence until all have stopped (each forward holds the lock)."""
        model = self.backbone.model
        lock = self.backbone.lock
        mask, positions = batch.attention_mask, batch.position_ids
        with lock:
            output = self._prefill(batch)
        finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        stop = torch.tensor(sorted(self.stop_token_ids), device=mask.device)
        for _ in range(max_new_tokens):
            next_tokens = output.logits[:, -1].argmax(dim=-1)
            next_tokens = next_tokens.masked_fill(finished, int(stop[0]))
            yield next_tokens
            finished |= torch.isin(next_tokens, stop)
            if finished.all():
                return
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
            with lock, self.reading():
                output = model(
                    input_ids=next_tokens.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_keyword: returned_cache(output)},
                )

    def _prefill(self, batch: ReaderBatch) -> CausalLMOutputWithPast:
        """The first forward pass over the whole prompt.

        An unpadded row (one question at a time, as a RAG pipeline asks) starts from a copy of the
        cached KV of the prompt prefix, so only the context, the question and the cue are computed:
        on a CPU that saves the prefix's share of the prefill (about 27 of 140 positions for 84 slots).
        """
        model = self.backbone.model
        prefix = batch.prompt_prefix
        if not prefix or batch.inputs_embeds.shape[0] != 1 or not bool(batch.attention_mask.all()):
            with self.reading(batch.slot_mask):
                return model(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=True,
                    **self._last_logits,
                )
        # The prefix is text: its KV depends on the adapter only where the adapter covers text positions.
        adapter_key = (self.adapter.name, self.adapter.digest) if self.adapter is not None else None
        key = (tuple(prefix), str(self.backbone.device), self.backbone.dtype, adapter_key)
        if self._prefix_cache is None or self._prefix_cache[0] != key:
            ids = torch.tensor([prefix], device=self.backbone.device)
            with self.reading():  # the base model only: the prefix's logits are never read
                self._prefix_cache = (key, returned_cache(model.base_model(input_ids=ids, use_cache=True)))
        start = len(prefix)
        slot_mask = batch.slot_mask[:, start:] if batch.slot_mask is not None else None
        with self.reading(slot_mask):
            return model(
                inputs_embeds=batch.inputs_embeds[:, start:],
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids[:, start:],
                use_cache=True,
                **{self._cache_keyword: copy.deepcopy(self._prefix_cache[1])},  # decoding appends to it
                **self._last_logits,
            )

    def _decode(self, token_ids: list[int]) -> str:
        kept = []
        for token in token_ids:
            if token in self.stop_token_ids:
                break
            kept.append(token)
        with self.backbone.lock:
            return self.backbone.tokenizer.decode(kept, skip_special_tokens=True).strip()


def attached_adapter(backbone: Backbone) -> ReaderAdapter | None:
    """The one reader adapter attached to ``backbone``, or None; several must be chosen explicitly."""
    adapters = list(backbone.reader_adapters.values())
    if len(adapters) > 1:
        names = ", ".join(adapter.name for adapter in adapters)
        raise InvalidInputError(
            f"The backbone holds several reader adapters ({names}); pass the one to read with: "
            "Reader(backbone, adapter=...)."
        )
    return adapters[0] if adapters else None


def _check_strings(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidInputError(f"Expected a list of strings for the {what}s, got {type(values).__name__}.")
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{what.capitalize()} {index} must be a non-empty string, got {value!r:.80}.")
        check_text(value, f"{what.capitalize()} {index}")
    return list(values)
