"""Hidden-state distillation: the reader's layer outputs after the context, reading the slots, pulled towards
the same reader's reading the raw passages."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_training import shipped_head_run, tiny_config, write_tiny_data

from comprexit_rag.cli import main
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.prompts import QAPrompt
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training import losses
from comprexit_rag.training.teacher_forcing import reader_inputs, target_and_layer_states
from comprexit_rag.training.trainer import build_encoder, make_sampler, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data"))


class TextEmbeddingEncoder:
    """Gives the reader the embeddings of the very text the teacher reads: a student that reads as the teacher."""

    name = "text"

    def __init__(self, backbone) -> None:
        self.backbone = backbone

    def encode(self, batch, ratio):
        tokenizer = self.backbone.tokenizer
        texts = ["\n\n".join(tokenizer.decode(ids) for ids in example.passage_ids) for example in batch]
        ids = self.backbone.tokenize(texts)
        return [self.backbone.embed(torch.tensor(row, device=self.backbone.device)).float() for row in ids]


def test_the_positions_after_the_context_are_the_same_tokens_for_slots_and_text(tiny_backbone):
    reader = Reader(tiny_backbone, adapter=None)
    questions = ["Who wrote it?", "When was the bridge finished, and by whom?"]
    targets = [[5, 6, 7], [8]]
    texts = ["A short passage.", "A much longer passage, with more words in it than the first one has."]
    slots = [torch.zeros(3, tiny_backbone.hidden_size), torch.zeros(7, tiny_backbone.hidden_size)]
    prompt = QAPrompt()
    by_text = reader.build_inputs(questions, texts, targets, prompt=prompt, padding_side="right")
    by_slots = reader.build_inputs(questions, slots, targets, prompt=prompt, padding_side="right")
    rows = []
    for batch in (by_text, by_slots):
        width = batch.attention_mask.shape[1]
        rows.append([(int(p) // width, int(p) % width) for p in batch.after_positions])
    # One position per token after the context, in the same rows, in both readings.
    assert [row for row, _ in rows[0]] == [row for row, _ in rows[1]]
    for batch, positions in zip((by_text, by_slots), rows, strict=True):
        lengths = batch.attention_mask.sum(dim=1).tolist()
        for row in range(len(questions)):
            columns = [column for r, column in positions if r == row]
            # They run to the row's end (the target), right after the context.
            assert columns == list(range(lengths[row] - len(columns), lengths[row]))
            assert columns[0] == len(batch.prompt_prefix) + batch.context_lengths[row]
    text_tokens = by_text.inputs_embeds.reshape(-1, by_text.inputs_embeds.shape[-1])[by_text.after_positions]
    slot_tokens = by_slots.inputs_embeds.reshape(-1, by_slots.inputs_embeds.shape[-1])[by_slots.after_positions]
    assert torch.equal(text_tokens, slot_tokens)


def test_a_student_that_reads_the_text_has_nothing_to_learn(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "d", data, "comprexit", "sft", distill_hidden_weight=1.0)
    batch, prompt = make_sampler(config, tiny_backbone)[0](random.Random(0))
    reader = Reader(tiny_backbone, adapter=None)
    as_teacher = TextEmbeddingEncoder(tiny_backbone)
    plain = losses.answer_loss(reader, as_teacher, batch, 4, prompt)
    distilled = losses.distilled_loss(reader, as_teacher, batch, 4, prompt, 0.5, hidden_weight=1.0)
    torch.testing.assert_close(distilled, plain)
    states = target_and_layer_states(reader, reader_inputs(reader, batch, as_teacher.encode(batch, 4), prompt))[2]
    assert states.shape[0] == tiny_backbone.model.config.num_hidden_layers


def test_the_layer_term_adds_to_the_loss_and_reaches_the_head(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "d", data, "comprexit", "sft", distill_weight=0.5, distill_hidden_weight=1.0)
    encoder = build_encoder(config, tiny_backbone)
    batch, prompt = make_sampler(config, tiny_backbone)[0](random.Random(0))
    reader = Reader(tiny_backbone, adapter=None)
    answers_only = losses.distilled_loss(reader, encoder, batch, 4, prompt, 0.5)
    with_layers = losses.distilled_loss(reader, encoder, batch, 4, prompt, 0.5, hidden_weight=1.0)
    assert with_layers.item() > answers_only.item()  # an untrained head's slots are not read as the text is
    with_layers.backward()
    assert all(p.grad is not None for p in encoder.trainable.parameters() if p.requires_grad)


def test_a_run_distils_the_layers_alone(make_tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "run", data, "comprexit", "sft", distill_hidden_weight=0.5)
    summary = train(config, make_tiny_backbone())
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert summary["config"]["distill_hidden_weight"] == 0.5 and summary["config"]["distill_weight"] == 0.0


def test_the_log_records_each_term_of_the_distilled_loss(make_tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "run", data, "comprexit", "sft", distill_weight=0.5, distill_hidden_weight=2.0)
    train(config, make_tiny_backbone())
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        terms = record["terms"]
        assert set(terms) == {"cross_entropy", "kl", "layer_distance"}
        assert terms["kl"] > 0 and 0 < terms["layer_distance"] < 2  # an untrained head's slots are not the text
        # The terms, weighted as configured, are the logged loss (up to the log's rounding).
        weighted = terms["cross_entropy"] + 0.5 * terms["kl"] + 2.0 * terms["layer_distance"]
        assert weighted == pytest.approx(record["loss"], abs=2e-3)
    plain = tiny_config(tmp_path / "plain", data, "comprexit", "sft")
    train(plain, make_tiny_backbone())
    assert all("terms" not in json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines())


def test_terms_without_the_layer_distance_refuse_a_layer_weight(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "d", data, "comprexit", "sft", distill_weight=0.5)
    encoder = build_encoder(config, tiny_backbone)
    batch, prompt = make_sampler(config, tiny_backbone)[0](random.Random(0))
    terms = losses.distillation_terms(Reader(tiny_backbone, adapter=None), encoder, batch, 4, prompt)
    assert terms.layer_distance is None and set(terms.detached()) == {"cross_entropy", "kl"}
    torch.testing.assert_close(terms.loss(0.5), terms.cross_entropy + 0.5 * terms.kl)
    with pytest.raises(ValueError, match="layers=True"):
        terms.loss(0.5, hidden_weight=1.0)


def test_the_layer_weight_is_checked(data, tmp_path):
    with pytest.raises(InvalidInputError, match="distill_hidden_weight must be >= 0"):
        tiny_config(tmp_path / "a", data, "comprexit", "sft", distill_hidden_weight=-1.0)
    with pytest.raises(InvalidInputError, match="Distillation"):
        tiny_config(tmp_path / "b", data, "full-tuned", "sft", distill_hidden_weight=1.0)


@pytest.mark.slow
def test_the_hidden_distillation_experiment_runs_on_the_shipped_head(data, tmp_path):
    output = tmp_path / "hidden"
    argv = shipped_head_run("sft-4x-mixed-hidden-distill.json", output, data, steps=2)
    assert main([*argv, "--log-every", "1"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    assert summary["config"]["distill_hidden_weight"] == 10.0 and summary["config"]["distill_weight"] == 0.5
    logged = [json.loads(line)["loss"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all(0 < loss < 50 for loss in logged)
