"""The training loop: frozen backbone, one trainable module, answer-token (or continuation) loss.

Readable top to bottom: build the encoder and data, then for each step sample a batch
(deterministically from seed and step), encode its passages, let the frozen reader score
the targets, and update. Checkpoints hold the module (safetensors), the optimizer state
(tensors only, loaded with ``weights_only=True``) and a JSON state, so a run resumes exactly
(:mod:`.checkpoints`: a kill at any moment leaves one complete checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..backbone import Backbone
from ..durable import atomic_write_json
from ..errors import InvalidInputError
from ..methods import get_method
from ..methods.full_lora import FullLoRA
from ..prompts import ContinuationPrompt, Prompt, QAPrompt, ReconstructionPrompt, answer_end_token_id
from ..reading.adapter import ADAPTER_DIR, ReaderAdapter, ReaderAdapterConfig
from ..reading.reader import Reader
from ..reading.widening import widen
from .checkpoints import checkpoint_files, read_state, resume, save_checkpoint, save_module_and_adapter
from .config import TrainConfig, check_method_and_stage
from .contexts import ContextEncoder
from .data import DEFAULT_QA_FAMILIES, PretrainCorpus, QATrainingSet
from .examples import TrainExample
from .losses import answer_loss, distillation_terms, passage_reconstructions
from .passes import reading_passes

logger = logging.getLogger(__name__)

REFIT_STEPS = (20, 100)
# The first steps (allocator, kernel selection, data warm-up) are slow: step times count from here.
PACE_FROM_STEP = 10


def build_encoder(config: TrainConfig, backbone: Backbone) -> ContextEncoder:
    """The training encoder of ``config.method`` (see the method registry), its module fresh or loaded
    from ``config.init_from``, in training mode on the backbone's device."""
    from ..checkpoint import check_fingerprint

    check_method_and_stage(config.method, config.stage)  # the config may have been changed since
    spec = get_method(config.method)
    encoder = spec.encoder_class().build(spec, config, backbone)
    module = encoder.trainable
    check_fingerprint(module.fingerprint, backbone.fingerprint, f"The {config.method} checkpoint")
    module.to(backbone.device).train()
    return encoder


def resumed_module(config: TrainConfig, checkpoint: Path, state: dict) -> TrainConfig:
    """``config`` with the module loaded from ``checkpoint`` (the adapter and the rest load in :func:`resume`)."""
    return replace(config, init_from=str(checkpoint_files(checkpoint, state) / "module"), standardize_layers=False)


def build_reader_adapter(config: TrainConfig, backbone: Backbone) -> ReaderAdapter | None:
    """The reader adapter trained with the module: the init checkpoint's (widened when ``adapter_rank`` is
    higher than its own), a fresh one, or none."""
    saved = Path(config.init_from) / ADAPTER_DIR if config.init_from else None
    if saved is not None and saved.is_dir():
        adapter = ReaderAdapter.from_pretrained(saved, backbone)
        rank = adapter.config.rank
        if config.adapter_rank is not None and config.adapter_rank < rank:
            raise InvalidInputError(
                f"{saved} is a rank-{rank} reader adapter and adapter_rank is {config.adapter_rank}: "
                f"set adapter_rank to {rank} to continue it, or higher to widen it."
            )
        if config.adapter_rank is not None and config.adapter_rank > rank:
            logger.info("Widening the reader adapter of %s from rank %d to %d", saved, rank, config.adapter_rank)
            adapter = widen(adapter, replace(adapter.config, rank=config.adapter_rank, alpha=config.adapter_alpha))
    elif config.reader_adapter:
        adapter_config = ReaderAdapterConfig(
            rank=config.adapter_rank, alpha=config.adapter_alpha, scope=config.adapter_scope
        )
        adapter = ReaderAdapter.create(backbone, adapter_config)
    else:
        return None
    for parameter in adapter.parameters():
        parameter.data = parameter.data.float()
    return adapter.train()


Sampler = Callable[[random.Random], tuple[list[TrainExample], Prompt]]


def make_sampler(config: TrainConfig, backbone: Backbone) -> tuple[Sampler, dict]:
    """A function from a seeded RNG to a training batch and the prompt it is read with, and the
    identity of the data it draws from (a resumed run must draw from the same)."""
    if config.stage == "pretrain":
        return pretrain_sampler(config, backbone)
    retrieved = config.max_distractors if config.retrieved_distractor_share else 0
    qa = QATrainingSet.build(
        backbone.tokenizer,
        families=config.qa_families or DEFAULT_QA_FAMILIES,
        root=config.data_root,
        limit_per_family=config.limit_per_family,
        retrieved_distractors=retrieved,
        embedder_device=str(backbone.device),
    )
    identity: dict = {"qa_examples": sum(len(items) for items in qa.families.values())}
    if retrieved:  # a resumed run must draw the same neighbours
        identity["retrieved_distractors"] = qa.neighbours_digest()
    sample_text = None
    if config.text_share:  # QA tuning that keeps practising what pretraining taught
        sample_text, identity["text"] = pretrain_sampler(config, backbone)

    def sample_qa(rng: random.Random) -> tuple[list[TrainExample], Prompt]:
        if sample_text is not None and rng.random() < config.text_share:
            return sample_text(rng)
        batch = qa.sample(
            rng, config.batch_size, config.distractor_prob, config.max_distractors, config.retrieved_distractor_share
        )
        return batch, QAPrompt()

    return sample_qa, identity


def pretrain_sampler(config: TrainConfig, backbone: Backbone) -> tuple[Sampler, dict]:
    corpus = PretrainCorpus.build(backbone.tokenizer, config.data_root, config.max_pretrain_tokens, config.wikipedia)
    stop_id = answer_end_token_id(backbone.tokenizer)

    def sample_pretrain(rng: random.Random) -> tuple[list[TrainExample], Prompt]:
        context = rng.choice(config.context_lengths)  # short passages matter too
        if config.reading_task_prob and rng.random() < config.reading_task_prob:
            return corpus.sample_reading_tasks(rng, config.batch_size, context, backbone.tokenizer, stop_id), QAPrompt()
        if rng.random() < config.reconstruction_prob:
            return corpus.sample_reconstruction(rng, config.batch_size, context, stop_id), ReconstructionPrompt()
        return corpus.sample(rng, config.batch_size, context, config.continuation_length), ContinuationPrompt()

    return sample_pretrain, corpus.identity


def distillation_teacher(config: TrainConfig, backbone: Backbone) -> Reader | None:
    """The reader of ``config.distill_teacher`` (a full-lora checkpoint's adapter, frozen), or None: the
    distillation teacher is then the reader being trained."""
    if config.distill_teacher is None:
        return None
    adapter = FullLoRA.load_reader_adapter(config.distill_teacher, backbone).eval()
    logger.info("Distillation teacher: the full-lora adapter %s of %s", adapter.name, config.distill_teacher)
    return Reader(backbone, adapter=adapter)


def accumulate_gradients(
    config: TrainConfig,
    step: int,
    sample: Sampler,
    reader: Reader,
    encoder: ContextEncoder,
    state: dict,
    teacher_reader: Reader | None = None,
    stop_id: int | None = None,
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], int, Prompt]:
    """The forward and backward passes of one optimiser step: its ``grad_accum`` micro-batches, each read in
    :func:`reading_passes`, their gradients summed in the parameters. Returns the passes' losses, each
    weighted by its share of the step (on the device: reading one waits for the step), the distilled loss's
    terms weighted the same way (none without distillation), and the last micro-batch's ratio and prompt;
    counts the examples and target tokens in ``state``. With ``passage_reconstruction_weight``, the passages of a
    batch read with the QA prompt (QA examples and reading tasks) are also written back from their slots (ended
    by ``stop_id``), and that term is added the same way."""
    losses = []
    parts: dict[str, torch.Tensor] = {}
    for micro in range(config.grad_accum):
        ratio, batch, prompt = draw_batch(config, step, micro, sample)
        targets = sum(len(example.target_ids) for example in batch)
        for part in reading_passes(batch, config.max_pass_tokens):
            # Both losses are means over target tokens: weighting each pass by its share of them gives the
            # whole batch's loss and gradient.
            share = sum(len(example.target_ids) for example in part) / targets / config.grad_accum
            if config.distill_weight or config.distill_hidden_weight:
                hidden = config.distill_hidden_weight
                terms = distillation_terms(reader, encoder, part, ratio, prompt, teacher_reader, layers=hidden > 0)
                loss = terms.loss(config.distill_weight, hidden)
                for name, value in terms.detached().items():
                    parts[name] = parts.get(name, 0) + value * share
            else:
                loss = answer_loss(reader, encoder, part, ratio, prompt)
            (loss * share).backward()
            losses.append(loss.detach() * share)
        if config.passage_reconstruction_weight and isinstance(prompt, QAPrompt):
            # Passes of their own (a passage written out is a longer row than its question), so the frozen pass
            # that feeds the head runs again on these passages: the cost of keeping each pass within its budget.
            rebuilt = passage_reconstructions(batch, stop_id)
            rebuilt_tokens = sum(len(example.target_ids) for example in rebuilt)
            for part in reading_passes(rebuilt, config.max_pass_tokens):
                share = sum(len(example.target_ids) for example in part) / rebuilt_tokens / config.grad_accum
                loss = answer_loss(reader, encoder, part, ratio, ReconstructionPrompt())
                (config.passage_reconstruction_weight * share * loss).backward()
                losses.append(config.passage_reconstruction_weight * share * loss.detach())
                parts["passage_reconstruction"] = parts.get("passage_reconstruction", 0) + loss.detach() * share
        state["examples"] += len(batch)
        state["target_tokens"] += targets
    return losses, parts, ratio, prompt


def draw_batch(config: TrainConfig, step: int, micro: int, sample: Sampler) -> tuple[int, list[TrainExample], Prompt]:
    """The ratio, examples and prompt of micro-batch ``micro`` of step ``step``: a function of (seed, step,
    micro) alone, so a resumed run draws the batches it would have drawn, and a replay of a run's draws
    (``research/seen_questions.py``) finds the examples it trained on."""
    rng = random.Random(config.seed * 1_000_003 + step * 101 + micro)
    ratio = rng.choice(config.ratios)
    batch, prompt = sample(rng)
    return ratio, batch, prompt


def expects_reader_adapter(config: TrainConfig) -> bool | None:
    """Whether ``config`` trains a reader adapter, or None when its init checkpoint is gone and cannot say."""
    if config.init_from is None:
        return config.reader_adapter
    init = Path(config.init_from)
    if not init.is_dir():
        return None
    return (init / ADAPTER_DIR).is_dir() or config.reader_adapter


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(config: TrainConfig, backbone: Backbone) -> dict:
    """Run (or resume) one training stage; returns the summary also written to ``summary.json``."""
    # Compiled for this run only: the caller's backbone reads (and generates) eagerly afterwards.
    with backbone.compiled_layers() if config.compile_layers else contextlib.nullcontext():
        return _train(config, backbone)


def _train(config: TrainConfig, backbone: Backbone) -> dict:
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    checkpoint = output / "checkpoint"
    saved_state = read_state(checkpoint)
    resuming = saved_state is not None
    # A resumed run rebuilds its module from the checkpoint, whatever first made it (a fresh head with a
    # calibrated standardisation, or --init-from): a fresh module may not have the same buffers.
    start = resumed_module(config, checkpoint, saved_state) if resuming else config
    encoder = build_encoder(start, backbone)
    module = encoder.trainable
    # The adapter too: a first piece's --init-from may be gone by now (session 26: it was a generation of
    # this run's own checkpoint, removed when the next one was saved).
    adapter = build_reader_adapter(start, backbone)
    if resuming and expects_reader_adapter(config) not in (None, adapter is not None):
        raise InvalidInputError(
            f"The checkpoint in {checkpoint} was saved {'with' if adapter is not None else 'without'} a reader "
            "adapter; resume with the configuration it was started with."
        )
    if config.freeze_module:
        if adapter is None:
            raise InvalidInputError(
                f"freeze_module trains the reader adapter alone, and {config.init_from} has none: set reader_adapter."
            )
        # No weight of the module needs a gradient, so autograd records nothing before the reading pass.
        module.requires_grad_(False)
    reader = Reader(backbone, adapter=adapter)
    groups = []
    if not config.freeze_module:
        groups.append({"params": [p for p in module.parameters() if p.requires_grad], "lr_scale": 1.0})
    if adapter is not None:
        adapter_lr = config.adapter_lr if config.adapter_lr is not None else config.lr / 2
        groups.append({"params": adapter.parameters(), "lr_scale": adapter_lr / config.lr})
        logger.info("Reader adapter: %d parameters (%s scope)", adapter.num_parameters(), adapter.config.scope)
    # On a GPU the fused update is one kernel per step instead of a few per parameter tensor (8.7 ms of a
    # 470 ms step at 512 x 128). Its state dict is the same: a run resumes from either (the checkpoint's
    # param groups, with their "fused" flag, are what a resumed optimiser keeps).
    fused = backbone.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay, fused=fused
    )
    parameters = [p for group in groups for p in group["params"]]

    sample, data_identity = make_sampler(config, backbone)
    teacher_reader = distillation_teacher(config, backbone)
    stop_id = answer_end_token_id(backbone.tokenizer) if config.passage_reconstruction_weight else None
    if teacher_reader is not None:  # its answers are the distilled targets: a resumed run needs the same teacher
        data_identity["distill_teacher"] = teacher_reader.adapter.digest
    state = {
        "step": 0,
        "total_steps": config.max_steps,
        "elapsed_s": 0.0,
        "examples": 0,
        "target_tokens": 0,
        "refit_step": 0,
        "refit_elapsed_s": 0.0,
    }
    if resuming:
        state |= resume(checkpoint, saved_state, adapter, optimizer)
        if state.get("data", data_identity) != data_identity:
            raise InvalidInputError(
                f"{output} was trained on data {state['data']}, but this run reads {data_identity}: resume with the "
                "same --data, shards and token cap, or start a new output directory."
            )
        logger.info("Resuming %s at step %d", output, state["step"])
    state["data"] = data_identity

    log_path = output / "log.jsonl"
    progress = tqdm(total=state["total_steps"], initial=state["step"], desc=f"{config.method}/{config.stage}")
    started = time.perf_counter() - state["elapsed_s"]
    piece_started_s = state["elapsed_s"]
    while state["step"] < state["total_steps"]:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, state["total_steps"], config) * group["lr_scale"]
        out_of_memory = False
        try:
            losses, parts, ratio, prompt = accumulate_gradients(
                config, step, sample, reader, encoder, state, teacher_reader, stop_id
            )
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        except torch.OutOfMemoryError:
            # One batch too large for the device costs its step, not the run (a time-budgeted stage saves
            # nothing until it ends). Its tensors are freed once the handler is left.
            out_of_memory = True
        if out_of_memory:
            losses, parts, ratio, prompt = [torch.tensor(math.nan)], {}, None, None
            grad_norm = torch.tensor(math.nan)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:  # never let one bad batch poison the weights
            state["skipped_steps"] = state.get("skipped_steps", 0) + 1
            reason = "out of device memory" if out_of_memory else "non-finite gradient norm"
            logger.warning("Step %d: %s, update skipped", step, reason)
        optimizer.zero_grad(set_to_none=True)

        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        if config.time_budget_s and state["step"] == PACE_FROM_STEP and not state["refit_step"]:
            state["refit_step"], state["refit_elapsed_s"] = state["step"], state["elapsed_s"]
        if config.time_budget_s and state["step"] in REFIT_STEPS:
            # Fit the schedule into the time budget at the step time since the last refit (or since
            # PACE_FROM_STEP): the first steps and steps that shared the GPU with runs since finished
            # are slower than the ones to come.
            steps_since = state["step"] - state["refit_step"]
            seconds_per_step = (state["elapsed_s"] - state["refit_elapsed_s"]) / steps_since
            affordable = state["step"] + int((config.time_budget_s - state["elapsed_s"]) / seconds_per_step)
            state["total_steps"] = max(state["step"] + 1, min(config.max_steps, affordable))
            state["refit_step"], state["refit_elapsed_s"] = state["step"], state["elapsed_s"]
            progress.total = state["total_steps"]
        if config.time_budget_s and state["elapsed_s"] >= config.time_budget_s:
            state["total_steps"] = state["step"]  # the budget is a hard limit, even if steps got slower
        progress.update(1)
        if state["step"] % config.log_every == 0 or state["step"] == state["total_steps"]:
            total_loss = torch.stack(losses).sum().item()  # each already weighted by its share of the step
            record = {
                "step": state["step"],
                "loss": round(total_loss, 4),
                "ratio": ratio,
                "objective": type(prompt).__name__ if prompt is not None else None,
                "lr": lr_at(step, state["total_steps"], config),
                "grad_norm": round(float(grad_norm), 3),
                "elapsed_s": round(state["elapsed_s"], 1),
                "sequences_per_s": round(state["examples"] / max(state["elapsed_s"], 1e-9), 1),
            }
            if parts:  # the distilled loss's terms, unweighted: which of them the run is still learning
                record["terms"] = {name: round(float(value), 4) for name, value in parts.items()}
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{total_loss:.3f}", ratio=ratio)
        if state["step"] % config.save_every == 0:
            save_checkpoint(checkpoint, module, adapter, optimizer, state)
        if config.piece_seconds is not None and state["elapsed_s"] - piece_started_s >= config.piece_seconds:
            logger.info("Piece time is up at step %d of %d; rerun to resume", state["step"], state["total_steps"])
            break
    progress.close()

    summary = {
        "method": config.method,
        "stage": config.stage,
        "finished": state["step"] >= state["total_steps"],
        "steps": state["step"],
        "total_steps": state["total_steps"],
        "examples_seen": state["examples"],
        "target_tokens_seen": state["target_tokens"],
        "wall_time_s": round(state["elapsed_s"], 1),
        "skipped_steps": state.get("skipped_steps", 0),
        "device": str(backbone.device),
        "config": asdict(config),
    }
    if adapter is not None:
        summary["reader_adapter"] = {"parameters": adapter.num_parameters(), "scope": adapter.config.scope}
    save_module_and_adapter(output / "final", module, adapter, training=summary)
    atomic_write_json(output / "summary.json", summary)
    save_checkpoint(checkpoint, module, adapter, optimizer, state)
    return summary
