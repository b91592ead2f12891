"""Teacher forcing: a batch's questions and targets laid out for the reader, and its states or logits at
the positions that predict a target token. The trainer's losses and the held-out reconstruction scores
(``benchmarks/slot_quality.py``) read them the same way."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..backbone import autocast_for
from ..prompts import Prompt
from ..reading.batch_layout import IGNORE_INDEX
from ..reading.reader import Context, Reader, ReaderBatch
from .examples import TrainExample


def reader_inputs(reader: Reader, batch: list[TrainExample], contexts: list[Context], prompt: Prompt) -> ReaderBatch:
    """The batch's questions and targets with ``contexts``, laid out for teacher forcing."""
    # Not check_values: a non-finite context makes a non-finite loss and gradient norm, and the trainer
    # skips that step; the check would make the host wait for the encoder before building the inputs.
    return reader.build_inputs(
        [example.question for example in batch],
        contexts,
        [example.target_ids for example in batch],
        prompt=prompt,
        padding_side="right",
        check_values=False,
    )


def target_logits(reader: Reader, inputs: ReaderBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, V] at the N positions that predict a target token, and those tokens [N] (teacher forcing)."""
    hidden, labels = target_states(reader, inputs)
    return reader.backbone.model.get_output_embeddings()(hidden), labels


def target_states(reader: Reader, inputs: ReaderBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden states [N, H] at the N positions that predict a target token, and those tokens [N]."""
    hidden = _decoder_output(reader, inputs, all_layers=False).last_hidden_state
    return _at_targets(hidden, inputs)


def target_and_layer_states(reader: Reader, inputs: ReaderBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`target_states` and, from the same forward pass, every decoder layer's output [L, M, H] at the M
    positions after the context (``inputs.after_positions``): the prompt's rest, the question and the targets."""
    output = _decoder_output(reader, inputs, all_layers=True)
    width = output.last_hidden_state.shape[-1]
    layers = torch.stack(
        [states.reshape(-1, width).index_select(0, inputs.after_positions) for states in output.hidden_states[1:]]
    )
    return *_at_targets(output.last_hidden_state, inputs), layers


def _decoder_output(reader: Reader, inputs: ReaderBatch, all_layers: bool) -> BaseModelOutputWithPast:
    model = reader.backbone.model
    with autocast_for(reader.backbone), reader.reading(inputs.slot_mask):
        return model.base_model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            output_hidden_states=all_layers,
        )


def _at_targets(hidden: torch.Tensor, inputs: ReaderBatch) -> tuple[torch.Tensor, torch.Tensor]:
    # Only positions that predict a target token go through the (large-vocabulary) LM head.
    if inputs.target_positions is not None:  # known from the host-side layout: no read of the device
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs.target_positions), inputs.target_ids
    labels = inputs.labels[:, 1:]
    selected = labels != IGNORE_INDEX
    return hidden[:, :-1][selected], labels[selected]
