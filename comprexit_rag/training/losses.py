"""The training losses: the targets' cross-entropy, and its distillation from the same reader (or a
``full-lora`` teacher) reading the raw passages instead of the slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..prompts import Prompt
from ..reading.reader import Reader, ReaderBatch
from .contexts import ContextEncoder
from .examples import TrainExample
from .linear_cross_entropy import linear_cross_entropy
from .teacher_forcing import reader_inputs, target_and_layer_states, target_states


def answer_loss(
    reader: Reader, encoder: ContextEncoder, batch: list[TrainExample], ratio: int, prompt: Prompt
) -> torch.Tensor:
    """Mean cross-entropy of the target tokens given prompt + encoded context (through the reader's adapter)."""
    hidden, labels = target_states(reader, reader_inputs(reader, batch, encoder.encode(batch, ratio), prompt))
    head = reader.backbone.model.get_output_embeddings()
    return linear_cross_entropy(hidden, head.weight, labels, head.bias)


def passage_reconstructions(batch: list[TrainExample], stop_id: int) -> list[TrainExample]:
    """Each passage of ``batch`` as a reconstruction example: compressed alone, as in the batch, and written out
    whole from its slots (read with the reconstruction prompt)."""
    return [TrainExample.reconstruction(ids, stop_id) for example in batch for ids in example.passage_ids]


@dataclass(frozen=True)
class DistillationTerms:
    """The parts of the distilled loss, each a mean over its positions: the targets' cross-entropy, KL(teacher ||
    student) on the same positions, and the cosine distance of the layer outputs after the context (``None``
    when not asked for)."""

    cross_entropy: torch.Tensor
    kl: torch.Tensor
    layer_distance: torch.Tensor | None

    def loss(self, weight: float, hidden_weight: float = 0.0) -> torch.Tensor:
        """Cross-entropy + ``weight`` x KL + ``hidden_weight`` x layer distance."""
        loss = self.cross_entropy + weight * self.kl
        if hidden_weight:
            if self.layer_distance is None:
                raise ValueError("These terms were computed without the layer distance; ask for it with layers=True.")
            loss = loss + hidden_weight * self.layer_distance
        return loss

    def detached(self) -> dict[str, torch.Tensor]:
        """The terms by name, without their graphs (what a training log records)."""
        terms = {"cross_entropy": self.cross_entropy, "kl": self.kl, "layer_distance": self.layer_distance}
        return {name: value.detach() for name, value in terms.items() if value is not None}


def distilled_loss(
    reader: Reader,
    encoder: ContextEncoder,
    batch: list[TrainExample],
    ratio: int,
    prompt: Prompt,
    weight: float,
    teacher_reader: Reader | None = None,
    hidden_weight: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy on the targets plus ``weight`` x KL(teacher || student) on the same positions, plus
    ``hidden_weight`` x the cosine distance between the student's and the teacher's layer outputs after the
    context (every decoder layer, at the prompt's rest, the question and the targets); see
    :func:`distillation_terms`."""
    terms = distillation_terms(reader, encoder, batch, ratio, prompt, teacher_reader, layers=hidden_weight > 0)
    return terms.loss(weight, hidden_weight)


def distillation_terms(
    reader: Reader,
    encoder: ContextEncoder,
    batch: list[TrainExample],
    ratio: int,
    prompt: Prompt,
    teacher_reader: Reader | None = None,
    layers: bool = False,
) -> DistillationTerms:
    """The student (``reader`` on the slots ``encoder`` makes) against the teacher reading the raw passages
    (no gradient): ``teacher_reader`` (e.g. a full-lora adapter) or, by default, the same reader.

    Both read the same tokens after the context, so their target positions, and their positions after the
    context, match one for one. The KL term teaches the answer the text gives; the layer term (``layers``)
    teaches the whole reading of the question the text gives, many more positions and dimensions a step than
    the answer's few tokens.
    """
    tokenizer = reader.backbone.tokenizer
    texts = ["\n\n".join(tokenizer.decode(ids) for ids in example.passage_ids) for example in batch]
    student, labels, student_layers = read_targets(
        reader, reader_inputs(reader, batch, encoder.encode(batch, ratio), prompt), layers
    )
    with torch.no_grad():
        teacher_side = teacher_reader or reader
        teacher, teacher_labels, teacher_layers = read_targets(
            teacher_side, reader_inputs(teacher_side, batch, texts, prompt), layers
        )
    if not torch.equal(teacher_labels, labels):
        raise RuntimeError("Teacher and student target positions differ; the prompts must end alike.")
    # One log-softmax of the student serves both terms (cross-entropy is its negative log-likelihood).
    log_probs = F.log_softmax(student.float(), dim=-1)
    kl = F.kl_div(log_probs, F.log_softmax(teacher.float(), dim=-1), log_target=True, reduction="batchmean")
    distance = None
    if layers:
        if student_layers.shape != teacher_layers.shape:
            raise RuntimeError("Teacher and student positions after the context differ; the prompts must end alike.")
        distance = (1 - F.cosine_similarity(student_layers.float(), teacher_layers.float(), dim=-1)).mean()
    return DistillationTerms(F.nll_loss(log_probs, labels), kl, distance)


def read_targets(
    reader: Reader, inputs: ReaderBatch, layers: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits [N, V] at the positions that predict a target token, those tokens [N] and, with ``layers``,
    every layer's output after the context (:func:`~.teacher_forcing.target_and_layer_states`)."""
    if layers:
        hidden, labels, states = target_and_layer_states(reader, inputs)
    else:
        (hidden, labels), states = target_states(reader, inputs), None
    return reader.backbone.model.get_output_embeddings()(hidden), labels, states
