"""Distillation from another reader: a full-lora checkpoint's adapter reads the raw passages as the teacher."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from test_training import tiny_config, write_tiny_data

from comprexit_rag.errors import CheckpointError, InvalidInputError
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training import losses, trainer
from comprexit_rag.training.trainer import build_encoder, make_sampler, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def teacher_checkpoint(make_tiny_backbone, data, tmp_path_factory):
    """A full-lora run of a few steps at a high lr: its adapter reads unlike the frozen reader."""
    output = tmp_path_factory.mktemp("teacher")
    config = tiny_config(output, data, "full-lora", "sft", reader_adapter=True, adapter_rank=4, lr=5e-2)
    train(config, make_tiny_backbone())
    return output / "final"


def test_the_teacher_is_the_full_lora_adapter_and_stays_frozen(make_tiny_backbone, data, teacher_checkpoint, tmp_path):
    backbone = make_tiny_backbone()
    config = tiny_config(tmp_path / "run", data, distill_weight=0.5, distill_teacher=str(teacher_checkpoint))
    teacher = trainer.distillation_teacher(config, backbone)
    assert teacher is not None and not teacher.adapter.training
    frozen = {id(p): p.clone() for p in teacher.adapter.parameters()}

    encoder = build_encoder(config, backbone)
    batch, prompt = make_sampler(config, backbone)[0](random.Random(0))
    student = Reader(backbone, adapter=None)
    by_itself = losses.distilled_loss(student, encoder, batch, 4, prompt, 0.5)
    by_teacher = losses.distilled_loss(student, encoder, batch, 4, prompt, 0.5, teacher)
    assert not torch.isclose(by_itself, by_teacher)  # another teacher, another KL
    by_teacher.backward()
    assert all(p.grad is None for p in teacher.adapter.parameters())

    summary = train(config, backbone)
    assert summary["steps"] == 3 and summary["config"]["distill_teacher"] == str(teacher_checkpoint)
    assert all(torch.equal(p, frozen[id(p)]) for p in teacher.adapter.parameters())


def test_a_run_resumes_only_with_the_same_teacher(make_tiny_backbone, data, teacher_checkpoint, tmp_path):
    config = tiny_config(tmp_path / "run", data, distill_weight=0.5, distill_teacher=str(teacher_checkpoint))
    train(replace(config, piece_seconds=0.0), make_tiny_backbone())
    with pytest.raises(InvalidInputError, match="trained on data"):
        train(replace(config, distill_teacher=None), make_tiny_backbone())
    assert train(config, make_tiny_backbone())["steps"] == 3


def test_a_teacher_needs_distillation_and_a_full_lora_checkpoint(make_tiny_backbone, data, tmp_path):
    with pytest.raises(InvalidInputError, match="set distill_weight or distill_hidden_weight > 0"):
        tiny_config(tmp_path / "run", data, distill_teacher="anything")
    head = tmp_path / "head"
    train(tiny_config(head, data, max_steps=1), make_tiny_backbone())
    config = tiny_config(tmp_path / "run", data, distill_weight=0.5, distill_teacher=str(head / "final"))
    with pytest.raises(CheckpointError):
        trainer.distillation_teacher(config, make_tiny_backbone())
