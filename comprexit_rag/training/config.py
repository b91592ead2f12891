"""The options of a training run, each declared once: the field's metadata is its CLI flag and help.

``comprexit-rag train`` builds one flag per field (``--batch-size`` for ``batch_size``; the type,
choices and default come from the field) and an experiment file (``--config run.json``) holds the
same names. Nothing here imports torch, so ``comprexit-rag train --help`` answers at once.

Metadata keys: ``help``; ``flag`` (when not ``--field-name``); ``positive`` (a whole number >= 1);
``choices``; ``cli_default`` (the flag's default where the field has none); ``head`` (a ComprExIT
head option: ``"override"``, set on a loaded head too since no weight depends on it, or ``"fresh"``,
shaping a new head only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..data.splits import FAMILIES
from ..errors import InvalidInputError
from ..methods import get_method, method_names, registered_methods
from ..methods.registry import STAGES
from ..validation import check_positive_int

__all__ = ["TrainConfig", "check_method_and_stage", "head_options"]

Stage = Literal["pretrain", "sft"]
HEAD_METHOD = "comprexit"  # the method whose head the ``head`` options shape
ADAPTER_SCOPES = ("all", "slots")  # comprexit_rag.reading.adapter.SCOPES, repeated here to keep this module torch-free
# A QA family read from a file of teacher-answered questions (``comprexit-rag teacher-qa``): "teacher:<path>".
TEACHER_FAMILY_PREFIX = "teacher:"
DEFAULT_ADAPTER_RANK = 16  # a fresh reader adapter's LoRA rank (the shipped head's)


def option(default: Any = None, help: str = "", *, factory: Any = None, **metadata: Any) -> Any:
    """A dataclass field with its CLI help (and flag settings) in its metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def required(help: str, **metadata: Any) -> Any:
    return field(metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    method: str = required("what to train", choices=method_names(trainable=True), cli_default="comprexit")
    stage: Stage = required(
        "pretrain: compress up to 512 tokens, then regenerate or continue them; sft: answer from the slots (required)",
        choices=STAGES,
    )
    output_dir: str = required("checkpoints, log.jsonl, summary.json, final/ (required)")
    init_from: str | None = option(help="checkpoint directory to start from (e.g. the pretrain stage's final/)")
    ratios: list[int] = option(help="one is sampled per step", factory=lambda: [4, 8, 16])
    batch_size: int = option(32, "examples per optimiser micro-batch", positive=True)
    grad_accum: int = option(1, "micro-batches per optimiser step", positive=True)
    max_pass_tokens: int | None = option(
        help="read each micro-batch in passes of at most N padded tokens (rows x longest passages + target); the "
        "batch and its gradient stay the same, only peak memory falls (full text at batch 32)",
        positive=True,
    )
    lr: float = option(1e-3, "peak learning rate (AdamW, cosine decay)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_steps: int = option(50, "linear warm-up steps")
    max_steps: int = option(2000, "optimiser steps", positive=True)
    time_budget_s: float | None = option(
        help="seconds; stop early and shorten the schedule to fit", flag="--time-budget"
    )
    piece_seconds: float | None = option(
        help="end this piece of a long run after N seconds, keeping its schedule; rerun the same command to resume"
    )
    seed: int = option(0, "random seed")
    context_length: int = option(512, "pretrain: the longest of the default --context-lengths")
    continuation_length: int = option(128, "pretrain: tokens predicted after the compressed text")
    reconstruction_prob: float = option(
        0.5, "pretrain: share of steps that regenerate the compressed text instead of continuing it"
    )
    reading_task_prob: float = option(
        0.0, "pretrain: share of steps that ask about the compressed window (span cloze, what follows a phrase)"
    )
    text_share: float = option(
        0.0, "sft: share of steps drawn from the pretraining text (objectives as in pretraining) instead of QA"
    )
    window: int | None = option(
        help="comprexit: tokens per transport window (default: the head's own, 128 when fresh)", head="override"
    )
    standardize_layers: bool = option(
        False,
        "comprexit, fresh head: standardise each layer's hidden states (calibrated on Wikipedia) before mixing",
        head="fresh",
    )
    locality_weight: float | None = option(
        help="comprexit: weight of the token-slot distance (in segments) in the transport cost "
        "(default: the head's own, 0 when fresh)",
        head="override",
    )
    max_slot_norm: float | None = option(
        help="comprexit: smooth bound on each slot's L2 norm (default: the head's own, none when fresh)",
        head="override",
    )
    position_binding: bool = option(
        False,
        "comprexit: rotate each value by its token's offset from its slot, so slots keep their tokens' order "
        "(a loaded head without it starts binding at zero frequencies; one with it keeps it)",
    )
    reader_adapter: bool = option(
        False,
        "train a LoRA on the reader (peft) with the head; the pass that feeds the head stays frozen "
        "(full-lora: the adapter is all it trains)",
    )
    freeze_module: bool = option(
        False,
        "keep the method's module (the ComprExIT head, the merger, the pooler) as --init-from saved it and train "
        "the reader adapter alone, on the slots that module makes",
    )
    adapter_rank: int | None = option(
        help=f"reader adapter: LoRA rank (default {DEFAULT_ADAPTER_RANK}; with --init-from, its adapter's rank: a "
        "higher one widens that adapter, which starts out computing the same)",
        positive=True,
    )
    adapter_alpha: float = option(32.0, "reader adapter: LoRA alpha")
    adapter_scope: str = option(
        "all",
        "reader adapter: apply the LoRA at every position of the reading pass, or at slot positions only",
        choices=ADAPTER_SCOPES,
    )
    adapter_lr: float | None = option(help="reader adapter: peak lr (default: half of --lr)")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    compile_layers: bool = option(
        False,
        "compile the backbone's decoder layers with torch.compile, for the reading pass and the frozen pass that "
        "feeds the head (regional: every layer's blocks share the graphs); the first steps compile",
    )
    context_lengths: list[int] | None = option(
        help="pretrain: tokens compressed per example, one length drawn per step (default: 128 256 384 and "
        "--context-length)"
    )
    wikipedia: list[str] | None = option(
        help="pretrain: Wikipedia shard globs under the data directory, e.g. 'wiki/enwiki_2015_AB_shard*.txt.gz' "
        "(default: the AA shards and the 2Wiki passages)"
    )
    qa_families: list[str] | None = option(
        help="SFT: QA training families (default: squad nq hotpotqa musique; policyqa adds another domain; "
        "teacher:FILE adds the pairs of a `comprexit-rag teacher-qa` file), sampled with weights squad 0.4, nq 0.4, "
        "hotpotqa 0.12, musique 0.08, policyqa 0.2, each teacher file 0.2"
    )
    distractor_prob: float = option(0.5, "SFT: chance of adding distractors")
    max_distractors: int = option(9, "SFT: most distractor passages added")
    retrieved_distractor_share: float = option(
        0.0,
        "SFT: share of distractor sets that are the question's nearest training passages by the retriever's "
        "embedder (all-MiniLM-L6-v2), as many as drawn, best first, as retrieval returns them; the rest are random",
    )
    soft_prompt_tokens: int = option(16, "full-tuned: learned soft tokens before the passages", positive=True)
    distill_weight: float = option(
        0.0, "comprexit/mean-pool: weight of KL to the same reader reading the raw passages (0: off)"
    )
    distill_hidden_weight: float = option(
        0.0,
        "comprexit/mean-pool: weight of the cosine distance between every reader layer's output after the context "
        "(prompt, question, target) reading the slots and reading the raw passages (0: off)",
    )
    distill_teacher: str | None = option(
        help="distillation: a full-lora checkpoint (a `train --method full-lora` run's final/) whose adapter, reading "
        "the raw passages, is the teacher instead of the reader being trained"
    )
    passage_reconstruction_weight: float = option(
        0.0,
        "SFT of stored slots: in every QA step, also write each passage of the batch back from its own slots "
        "(reconstruction prompt), this weight x its mean cross-entropy, so the QA stage keeps what the slots hold "
        "(0: off)",
    )
    log_every: int = option(10, "steps between log.jsonl lines", positive=True)
    save_every: int = option(200, "steps between checkpoints", positive=True)
    data_root: str | None = option(help="data directory (default: $COMPREXIT_DATA or ../shared/data)", flag="--data")
    max_pretrain_tokens: int | None = option(help="cap the pretraining corpus (smoke runs)")
    limit_per_family: int | None = option(help="cap SFT examples per data family (smoke runs)")

    def __post_init__(self) -> None:
        check_method_and_stage(self.method, self.stage)
        for item in fields(self):  # argparse checks choices given as flags; an experiment file's values land here
            choices = item.metadata.get("choices")
            if choices is not None and getattr(self, item.name) not in choices:
                raise InvalidInputError(
                    f"{item.name} must be one of {', '.join(choices)}, got {getattr(self, item.name)!r}."
                )
        spec = get_method(self.method)
        for name in head_options("override"):
            if getattr(self, name) is not None and self.method != HEAD_METHOD:
                raise InvalidInputError(f"{name} applies to the {HEAD_METHOD} head, not to {self.method}.")
        if self.position_binding and self.method != HEAD_METHOD:
            raise InvalidInputError(f"position_binding applies to the {HEAD_METHOD} head, not to {self.method}.")
        if self.standardize_layers and (self.method != HEAD_METHOD or self.init_from):
            raise InvalidInputError(
                f"standardize_layers shapes a fresh {HEAD_METHOD} head; a loaded head keeps the standardisation it was "
                "trained with (drop --init-from or the option)."
            )
        for name in ("reconstruction_prob", "reading_task_prob", "text_share", "retrieved_distractor_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if self.reader_adapter and not spec.reader_adapter:
            with_adapter = ", ".join(method_names(reader_adapter=True))
            raise InvalidInputError(f"A reader adapter trains with {with_adapter}, not {self.method}.")
        if spec.adapter_only and not self.reader_adapter:
            raise InvalidInputError(
                f"{self.method} trains a reader adapter and nothing else: set reader_adapter (--reader-adapter)."
            )
        if self.freeze_module and spec.adapter_only:
            raise InvalidInputError(f"{self.method} trains a reader adapter and no module: drop freeze_module.")
        if self.freeze_module and not self.init_from:
            raise InvalidInputError(
                "freeze_module keeps a loaded module as it is: set init_from (e.g. a pretraining run's final/)."
            )
        if self.reader_adapter and self.adapter_scope == "slots" and spec.context != "slots":
            raise InvalidInputError(
                f"{self.method} gives the reader {spec.context}, no slots: its adapter needs adapter_scope 'all'."
            )
        if self.adapter_rank is None and not self.init_from:
            self.adapter_rank = DEFAULT_ADAPTER_RANK
        if self.adapter_rank is not None:
            check_positive_int(self.adapter_rank, "adapter_rank")
        if self.context_lengths is None:
            self.context_lengths = [128, 256, 384, self.context_length]
        if not self.context_lengths or any(length <= 0 for length in self.context_lengths):
            raise InvalidInputError(f"context_lengths must be positive token counts, got {self.context_lengths}.")
        for name in ("distill_weight", "distill_hidden_weight", "passage_reconstruction_weight"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}.")
        distilled = self.distill_weight or self.distill_hidden_weight
        if distilled and not spec.distill:
            raise InvalidInputError(f"Distillation from the full-text reader applies to {method_names(distill=True)}.")
        if self.distill_teacher and not distilled:
            raise InvalidInputError(
                "distill_teacher is the teacher of distillation: set distill_weight or distill_hidden_weight > 0 too."
            )
        if self.passage_reconstruction_weight and (self.stage != "sft" or not spec.storable):
            raise InvalidInputError(
                "passage_reconstruction_weight rewrites passages from their stored slots in a QA stage: it applies to "
                f"the sft stage of {', '.join(name for name in method_names() if get_method(name).storable)}."
            )
        if self.max_pass_tokens is not None:
            check_positive_int(self.max_pass_tokens, "max_pass_tokens")
        if self.qa_families is not None and (not self.qa_families or not all(map(is_qa_family, self.qa_families))):
            raise InvalidInputError(
                f"qa_families must name some of {', '.join(FAMILIES)} or {TEACHER_FAMILY_PREFIX}FILE (a teacher-QA "
                f"file), got {self.qa_families}."
            )
        if self.max_grad_norm <= 0:
            raise InvalidInputError(f"max_grad_norm must be positive, got {self.max_grad_norm}.")


def is_qa_family(name: str) -> bool:
    """A data family of the QA splits, or ``teacher:<path>`` (the file is read when the QA set is built)."""
    return name in FAMILIES or (name.startswith(TEACHER_FAMILY_PREFIX) and name != TEACHER_FAMILY_PREFIX)


def check_method_and_stage(method: str, stage: str) -> None:
    """Refuse a combination the trainer cannot run, before any model or data is loaded."""
    spec = get_method(method, trainable=True)
    if stage not in STAGES:
        raise InvalidInputError(f"Unknown stage {stage!r}; expected 'pretrain' or 'sft'.")
    if stage not in spec.stages:
        able = ", ".join(other.name for other in registered_methods() if stage in other.stages)
        raise InvalidInputError(
            f"Stage {stage!r} applies to {able}; train {method} with --stage {' or '.join(spec.stages)}."
        )


def head_options(kind: str) -> tuple[str, ...]:
    """The TrainConfig fields that are ComprExIT head options of ``kind`` (``"override"`` or ``"fresh"``)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("head") == kind)
