"""Tests of the training loop (``comprexit_rag.training.trainer``) and ``comprexit-rag train``.

Runs are a few steps on CPU with the tiny random Llama of ``conftest.py`` and a tiny data
directory written in the layouts the split loaders read, so every stage runs in seconds. The
point is the plumbing: gradients reach the trainable module (a ``.detach()`` in the reader once
broke every stage unnoticed), the backbone stays frozen, checkpoints resume exactly, bad steps
are skipped and the time budget is honoured.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import math
import random
import shutil
import types
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comprexit_rag.backbone import Backbone
from comprexit_rag.checkpoint import load_state_dict, state_digest
from comprexit_rag.cli import main
from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.errors import AdapterMismatchError, CheckpointError, InvalidInputError
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import EvalMethod, FullText, build_method
from comprexit_rag.methods.base import head_digest
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.methods.full_lora import FullLoRA
from comprexit_rag.prompts import ContinuationPrompt, QAPrompt, ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.adapter import ADAPTER_DIR, ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.reading.batch_layout import IGNORE_INDEX
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training import checkpoints, losses, trainer
from comprexit_rag.training.checkpoints import checkpoint_files, read_state
from comprexit_rag.training.data import MAX_ANSWER_TOKENS, PretrainCorpus, QATrainingSet, corpus_key
from comprexit_rag.training.examples import TrainExample
from comprexit_rag.training.passes import reading_passes
from comprexit_rag.training.teacher_forcing import target_logits
from comprexit_rag.training.trainer import (
    TrainConfig,
    answer_loss,
    build_encoder,
    draw_batch,
    make_sampler,
    save_module_and_adapter,
    train,
)

# Every method/stage combination the trainer accepts.
LEGAL = [
    ("comprexit", "pretrain"),
    ("comprexit", "sft"),
    ("mean-pool", "pretrain"),
    ("mean-pool", "sft"),
    ("comi", "sft"),
    ("full-tuned", "sft"),
]
SQUAD_CONTEXTS = 304  # the squad split sends the first 300 contexts (by hash) to dev
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "reader_adapter"
SHIPPED_ADAPTER = Path(__file__).resolve().parents[2] / "comprexit_rag" / "pretrained" / "comprexit-smollm2-135m"


# ---------------------------------------------------------------------------------------------
# A tiny data directory in the real layouts.
# ---------------------------------------------------------------------------------------------


def town(index: int) -> dict[str, str]:
    """A made-up fact with a question and a short answer."""
    return {
        "title": f"Town {index}",
        "text": f"Town {index} lies on the river Rell{index} and was founded in {1500 + index} by Ada{index}.",
        "question": f"Who founded Town {index}?",
        "answer": f"Ada{index}",
    }


def article(index: int) -> str:
    """A few hundred tokens of plain prose for the pretraining stream."""
    sentences = [
        f"Town {index * 10 + k} lies on the river Rell{k}, trades in wool and grain, and holds a fair "
        f"every spring that draws merchants from {k + 2} neighbouring valleys."
        for k in range(8)
    ]
    return " ".join(sentences)


def write_gzip(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_tiny_data(root: Path) -> Path:
    """Every file ``load_split`` and ``pretraining_passages`` read, with a handful of rows each."""
    facts = [town(i) for i in range(SQUAD_CONTEXTS + 40)]
    hotpot_dev = [
        {
            "question_id": f"hp-dev-{i}",
            "question_text": facts[i]["question"],
            "answers_objects": [{"spans": [facts[i]["answer"]]}],
            "contexts": [
                {"title": facts[i]["title"], "paragraph_text": facts[i]["text"], "is_supporting": True},
                {"title": facts[i + 1]["title"], "paragraph_text": facts[i + 1]["text"], "is_supporting": False},
            ],
        }
        for i in range(0, 4, 2)
    ]
    (root / "hotpotqa").mkdir(parents=True)
    (root / "hotpotqa" / "dev_distractor_350.jsonl").write_text(jsonl(hotpot_dev), encoding="utf-8")
    hotpot_train = [
        {
            "_id": f"hp-train-{i}",
            "question": facts[i]["question"],
            "answer": facts[i]["answer"],
            "context": [[facts[i]["title"], [facts[i]["text"]]], [facts[i + 1]["title"], [facts[i + 1]["text"]]]],
            "supporting_facts": [[facts[i]["title"], 0]],
        }
        for i in range(4, 10, 2)
    ]
    write_json(root / "hotpotqa" / "train_distractor_100.json", hotpot_train)
    oracle = [
        {"question": facts[i]["question"], "answers": [facts[i]["answer"]], "ctxs": [{**facts[i], "isgold": True}]}
        for i in range(10, 13)
    ]
    write_gzip(root / "nq" / "nq_open_oracle_2155.jsonl.gz", jsonl(oracle))
    qed = [
        {
            "example_id": 1000 + i,
            "paragraph_text": facts[i]["text"],
            "question_text": facts[i]["question"],
            "title_text": facts[i]["title"],
            "answer_text": [facts[i]["answer"]],
        }
        for i in range(13, 17)
    ]
    write_gzip(root / "nq" / "qed" / "nq-train-00-qed.jsonl.gz", jsonl(qed))
    squad = [{"header": {"dataset": "SQuAD", "split": "dev"}}] + [
        {
            "id": f"ctx-{i}",
            "context": facts[i]["text"],
            "qas": [{"id": f"sq-{i}", "question": facts[i]["question"], "answers": [facts[i]["answer"]]}],
        }
        for i in range(20, 20 + SQUAD_CONTEXTS)
    ]
    write_gzip(root / "squad" / "squad_v1.1_dev.mrqa.jsonl.gz", jsonl(squad))
    musique = [
        {
            "id": f"mq-{i}",
            "question": facts[i]["question"],
            "answer": facts[i]["answer"],
            "answer_aliases": [],
            "paragraphs": [
                {"idx": 0, "title": facts[i]["title"], "paragraph_text": facts[i]["text"], "is_supporting": True},
                {
                    "idx": 1,
                    "title": facts[i + 1]["title"],
                    "paragraph_text": facts[i + 1]["text"],
                    "is_supporting": False,
                },
            ],
        }
        for i in range(330, 336, 2)
    ]
    write_json(root / "musique" / "train_100.json", musique)
    docs = "".join(
        f'<doc id="{i}" url="u{i}" title="Valley {i}">\nValley {i}\n\n{article(i)}\n</doc>\n' for i in range(4)
    )
    write_gzip(root / "wiki" / "enwiki_2015_AA_shard0.txt.gz", docs)
    write_gzip(root / "2wiki" / "corpus.json.gz", json.dumps([{"title": "Valley 9", "text": article(9)}]))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def test_documents_are_joined_by_bos_whatever_the_tokenizer_calls_eos(default_tokenizer, data, tmp_path, monkeypatch):
    # Session 20: transformers 5.17's GGUF converter names SmolLM2's BOS as its EOS too, and 5.25's does not;
    # joined by EOS, the same text gave two streams, and a run from one machine did not resume on the other.
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path / "cache"))
    tokenizer = copy.deepcopy(default_tokenizer)
    corpus = PretrainCorpus.build(tokenizer, str(data))
    separators = [index for index, token in enumerate(corpus.tokens) if token == tokenizer.bos_token_id]
    assert separators and corpus.tokens[-1] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in corpus.tokens.tolist()

    as_converted_by_517 = copy.deepcopy(default_tokenizer)
    as_converted_by_517.eos_token = as_converted_by_517.bos_token
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path / "another-cache"))
    other = PretrainCorpus.build(as_converted_by_517, str(data))
    assert other.identity == corpus.identity
    assert corpus_key(as_converted_by_517, str(data), None, None) == corpus_key(tokenizer, str(data), None, None)


def test_qa_examples_with_long_form_answers_are_left_out(tiny_backbone, data, tmp_path):
    # NQ train holds whole tables as answers (up to 4,227 tokens); one in a batch padded every row of the
    # reader's input to its length and ran an H200 out of memory.
    root = tmp_path / "data"
    shutil.copytree(data, root)
    qed = root / "nq" / "qed" / "nq-train-00-qed.jsonl.gz"
    with gzip.open(qed, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    rows[0]["answer_text"] = [" ".join(f"cell{i}" for i in range(200))]
    write_gzip(qed, jsonl(rows))

    kept = QATrainingSet.build(tiny_backbone.tokenizer, families=["nq"], root=str(root))
    everything = QATrainingSet.build(tiny_backbone.tokenizer, families=["nq"], root=str(root), max_answer_tokens=10**6)

    assert len(everything.families["nq"]) == len(kept.families["nq"]) + 1
    assert max(len(item.target_ids) for item in everything.families["nq"]) > MAX_ANSWER_TOKENS
    assert max(len(item.target_ids) for item in kept.families["nq"]) <= MAX_ANSWER_TOKENS


def test_qa_families_choose_what_the_qa_stage_draws_from(tiny_backbone, data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    # 230 policy segments: the split sends 200 to dev, 30 to train.
    for name, offset in (("policyqa_dev.json.gz", 400), ("policyqa_test.json.gz", 515)):
        paragraphs = []
        for fact in (town(offset + i) for i in range(115)):
            answer = {"text": fact["answer"], "answer_start": fact["text"].index(fact["answer"])}
            qa = {"id": fact["title"], "question": fact["question"], "answers": [answer]}
            paragraphs.append({"context": fact["text"], "qas": [qa]})
        write_gzip(
            root / "policyqa" / name, json.dumps({"data": [{"title": "policy.example", "paragraphs": paragraphs}]})
        )
    policy_questions = {town(i)["question"] for i in range(400, 630)}

    config = tiny_config(tmp_path / "run", root, qa_families=["policyqa"], text_share=0.0, batch_size=8)
    sample, _ = make_sampler(config, tiny_backbone)
    drawn = [example.question for seed in range(5) for example in sample(random.Random(seed))[0]]
    assert len(drawn) == 40 and set(drawn) <= policy_questions
    default, _ = make_sampler(replace(config, qa_families=None), tiny_backbone)
    assert not any(e.question in policy_questions for seed in range(5) for e in default(random.Random(seed))[0])
    with pytest.raises(InvalidInputError, match="qa_families must name some of"):
        tiny_config(tmp_path / "run", root, qa_families=["trivia"])


def test_a_runs_batches_replay_from_its_config_alone(tiny_backbone, data, tmp_path):
    # research/seen_questions.py counts the questions a finished run trained on by replaying draw_batch.
    config = tiny_config(tmp_path / "run", data, max_steps=4, grad_accum=2, text_share=0.5)
    summary = train(config, tiny_backbone)
    sample, _ = make_sampler(config, tiny_backbone)
    batches = [draw_batch(config, step, micro, sample) for step in range(4) for micro in range(2)]
    assert sum(len(e.target_ids) for _, batch, _ in batches for e in batch) == summary["target_tokens_seen"]
    assert sum(len(batch) for _, batch, _ in batches) == summary["examples_seen"]
    assert draw_batch(config, 3, 1, sample)[1] == batches[-1][1]
    assert draw_batch(replace(config, seed=1), 3, 1, sample)[1] != batches[-1][1]


def test_passage_reconstruction_adds_the_batchs_passages_written_back_from_their_slots(tiny_backbone, data, tmp_path):
    runs = {}
    for weight in (0.0, 2.0):  # the same start and QA batch: the logged loss differs by the weighted term alone
        config = tiny_config(
            tmp_path / f"w{weight}", data, max_steps=1, text_share=0.0, passage_reconstruction_weight=weight
        )
        train(config, tiny_backbone)
        runs[weight] = json.loads((Path(config.output_dir) / "log.jsonl").read_text().splitlines()[0])
    term = runs[2.0]["terms"]["passage_reconstruction"]
    assert term > 0 and "terms" not in runs[0.0]
    assert runs[2.0]["loss"] == pytest.approx(runs[0.0]["loss"] + 2.0 * term, rel=1e-3)

    batch = [TrainExample([[5, 6], [7]], "q?", [1, 9]), TrainExample([[8, 8, 8]], "q?", [2, 9])]
    assert [(e.passage_ids, e.question, e.target_ids) for e in losses.passage_reconstructions(batch, 9)] == [
        ([[5, 6]], "", [5, 6, 9]),
        ([[7]], "", [7, 9]),
        ([[8, 8, 8]], "", [8, 8, 8, 9]),
    ]


@pytest.mark.parametrize(
    ("method", "stage", "weight", "message"),
    [
        ("comprexit", "sft", -0.5, "must be >= 0"),
        ("comprexit", "pretrain", 0.5, "applies to the sft stage"),
        ("comi", "sft", 0.5, "applies to the sft stage of comprexit, mean-pool"),
    ],
)
def test_passage_reconstruction_is_refused_where_no_stored_slots_are_trained(tmp_path, method, stage, weight, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_config(tmp_path / "run", tmp_path, method, stage, passage_reconstruction_weight=weight)


def tiny_config(output: Path, data: Path, method: str = "comprexit", stage: str = "sft", **overrides) -> TrainConfig:
    """A 3-step run of batch 2 on short contexts; no weight decay, so only gradients move weights."""
    settings = {
        "ratios": [4, 8],
        "batch_size": 2,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "warmup_steps": 1,
        "max_steps": 3,
        "context_length": 128,
        "continuation_length": 16,
        "max_distractors": 2,
        "soft_prompt_tokens": 4,
        "log_every": 1,
        "save_every": 1000,
        "limit_per_family": 4,
        **overrides,
    }
    return TrainConfig(method=method, stage=stage, output_dir=str(output), data_root=str(data), **settings)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def initial_weights(config: TrainConfig, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The weights ``train`` starts from (it seeds torch with ``config.seed`` before building)."""
    torch.manual_seed(config.seed)
    return snapshot(build_encoder(config, backbone).trainable)


def final_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    return load_state_dict(Path(config.output_dir) / "final")


def cheap_loss(reader: Reader, encoder, batch: list[TrainExample], ratio: int, prompt) -> torch.Tensor:
    """A loss over the trainable weights only, for tests about the loop rather than the model."""
    return torch.stack([p.float().sum() for p in encoder.trainable.parameters()]).sum()


# ---------------------------------------------------------------------------------------------
# Every stage trains its module and only its module.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "stage"), LEGAL)
def test_every_stage_trains_its_module_and_not_the_backbone(tiny_backbone, data, tmp_path, method, stage):
    config = tiny_config(tmp_path / "run", data, method, stage)
    before = initial_weights(config, tiny_backbone)
    backbone_before = snapshot(tiny_backbone.model)

    summary = train(config, tiny_backbone)

    output = Path(config.output_dir)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert summary["method"] == method and summary["stage"] == stage
    assert json.loads((output / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3]
    assert all(math.isfinite(record["loss"]) for record in records)
    assert json.loads((output / "final" / "config.json").read_text())["training"] == summary
    after = final_weights(config)
    assert after.keys() == before.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"{method}/{stage}: no gradient reached {unchanged}"
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    for name, tensor in tiny_backbone.model.state_dict().items():
        assert torch.equal(tensor, backbone_before[name]), f"the frozen backbone's {name} changed"


def test_sft_continues_from_the_pretrain_stage(tiny_backbone, data, tmp_path):
    pretrain = tiny_config(tmp_path / "pretrain", data, "comprexit", "pretrain", max_steps=1)
    train(pretrain, tiny_backbone)
    sft = tiny_config(tmp_path / "sft", data, "comprexit", "sft", max_steps=1, init_from=f"{pretrain.output_dir}/final")
    start = initial_weights(sft, tiny_backbone)
    for name, tensor in final_weights(pretrain).items():
        assert torch.equal(start[name], tensor)
    train(sft, tiny_backbone)
    assert any(not torch.equal(start[name], tensor) for name, tensor in final_weights(sft).items())


def test_a_fresh_head_trains_standardised_and_local_and_keeps_its_statistics(tiny_backbone, data, tmp_path):
    pretrain = tiny_config(
        tmp_path / "pretrain", data, "comprexit", "pretrain", max_steps=1, standardize_layers=True, locality_weight=0.25
    )
    train(pretrain, tiny_backbone)
    head = ComprExITHead.from_pretrained(Path(pretrain.output_dir) / "final")
    assert head.config.standardize_layers and head.config.locality_weight == 0.25
    assert not torch.equal(head.depth.layer_scale, torch.ones_like(head.depth.layer_scale))  # calibrated on the data
    # QA fine-tuning goes on with another locality weight; the calibrated statistics are never trained.
    sft = tiny_config(tmp_path / "sft", data, "comprexit", "sft", max_steps=1, init_from=f"{pretrain.output_dir}/final")
    sft.locality_weight, sft.max_slot_norm = 0.0, 8.0
    train(sft, tiny_backbone)
    tuned = ComprExITHead.from_pretrained(Path(sft.output_dir) / "final")
    assert tuned.config.standardize_layers and tuned.config.locality_weight == 0.0
    assert tuned.config.max_slot_norm == 8.0 and head.config.max_slot_norm is None
    assert torch.equal(tuned.depth.layer_shift, head.depth.layer_shift)
    assert torch.equal(tuned.depth.layer_scale, head.depth.layer_scale)


def test_a_loaded_head_starts_binding_positions_trains_the_frequencies_and_keeps_them(tiny_backbone, data, tmp_path):
    pretrain = tiny_config(tmp_path / "pretrain", data, "comprexit", "pretrain", max_steps=1)
    train(pretrain, tiny_backbone)
    bound = tiny_config(
        tmp_path / "bound", data, "comprexit", "sft", max_steps=1, init_from=f"{pretrain.output_dir}/final"
    )
    bound.position_binding = True
    train(bound, tiny_backbone)
    head = ComprExITHead.from_pretrained(Path(bound.output_dir) / "final")
    assert head.config.position_binding
    assert head.width.position_frequencies.abs().min() > 0  # from zero, every frequency got a gradient
    # A run from a bound head without the option keeps the binding it was trained with.
    again = tiny_config(
        tmp_path / "again", data, "comprexit", "sft", max_steps=1, init_from=f"{bound.output_dir}/final"
    )
    train(again, tiny_backbone)
    assert ComprExITHead.from_pretrained(Path(again.output_dir) / "final").config.position_binding


@pytest.mark.parametrize(("probability", "objective"), [(1.0, ReconstructionPrompt), (0.0, ContinuationPrompt)])
def test_pretraining_reconstructs_or_continues_the_compressed_text(
    tiny_backbone, data, tmp_path, probability, objective
):
    config = tiny_config(tmp_path, data, "comprexit", "pretrain", reconstruction_prob=probability)
    sample, _ = make_sampler(config, tiny_backbone)
    for seed in range(4):
        batch, prompt = sample(random.Random(seed))
        assert isinstance(prompt, objective) and len(batch) == config.batch_size
        for example in batch:
            (context,) = example.passage_ids
            assert len(context) in (128, 256, 384)
            if objective is ReconstructionPrompt:  # the target is the compressed text itself, then stop
                assert example.target_ids == [*context, answer_end_token_id(tiny_backbone.tokenizer)]
            else:
                assert len(example.target_ids) == config.continuation_length
    summary = train(config, tiny_backbone)
    records = [json.loads(line) for line in (Path(config.output_dir) / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 3 and {record["objective"] for record in records} == {objective.__name__}


def test_reconstruction_prompt_asks_for_the_context_inside_the_chat_frame(default_tokenizer):
    before, after = ReconstructionPrompt().pieces(default_tokenizer)
    qa_before, _ = QAPrompt().pieces(default_tokenizer, "Who?")
    assert before == qa_before  # the same frame up to the context: what the reader learns carries over to QA
    text = default_tokenizer.decode(after)
    assert "Repeat the context word for word." in text and text.rstrip().endswith("assistant")


@pytest.mark.parametrize("probability", [-0.1, 1.5])
def test_reconstruction_probability_outside_0_1_is_refused(tmp_path, probability):
    with pytest.raises(InvalidInputError, match="reconstruction_prob"):
        TrainConfig(method="comprexit", stage="pretrain", output_dir=str(tmp_path), reconstruction_prob=probability)


@pytest.mark.parametrize(("method", "stage"), [("comi", "pretrain"), ("full-tuned", "pretrain"), ("nope", "sft")])
def test_illegal_method_and_stage_are_refused(tmp_path, method, stage):
    with pytest.raises(InvalidInputError, match=r"--stage sft|Unknown method"):
        TrainConfig(method=method, stage=stage, output_dir=str(tmp_path))


def test_gradients_reach_the_head_through_build_inputs(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path, data, "comprexit", "sft")
    torch.manual_seed(0)
    encoder = build_encoder(config, tiny_backbone)
    reader = Reader(tiny_backbone)
    ids = tiny_backbone.tokenize([town(1)["text"], town(2)["text"]])
    batch = [TrainExample([ids[0]], "Who founded Town 1?", [5, 6]), TrainExample([ids[1]], "Where?", [7])]
    contexts = encoder.encode(batch, 4)
    assert all(context.requires_grad for context in contexts)

    inputs = reader.build_inputs([e.question for e in batch], contexts, [e.target_ids for e in batch])
    assert inputs.inputs_embeds.requires_grad  # a detach() in context_embeddings would cut here
    inputs.inputs_embeds.float().pow(2).sum().backward()
    for name, parameter in encoder.trainable.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    # A bare tensor context too: its gradient is exactly the one of its rows in the batch.
    context = torch.randn(3, tiny_backbone.hidden_size, requires_grad=True)
    inputs = reader.build_inputs(["Who?"], [context], padding_side="right")
    before, _ = QAPrompt().pieces(tiny_backbone.tokenizer, "Who?")
    weights = torch.randn_like(inputs.inputs_embeds)
    (inputs.inputs_embeds * weights).sum().backward()
    torch.testing.assert_close(context.grad, weights[0, len(before) : len(before) + 3])


def test_right_and_left_padding_give_the_same_answer_loss(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path, data, "comprexit", "sft")
    torch.manual_seed(0)
    encoder = build_encoder(config, tiny_backbone)
    encoder.trainable.eval()
    reader = Reader(tiny_backbone)
    ids = tiny_backbone.tokenize([town(3)["text"], article(1)])
    batch = [  # very different lengths, so one row is mostly padding
        TrainExample([ids[0]], "Who founded Town 3?", [11, 12, 13]),
        TrainExample([ids[1]], "Which river?", [14]),
    ]

    def loss(examples: list[TrainExample], padding: str) -> torch.Tensor:
        build = Reader.build_inputs
        reader.build_inputs = lambda *args, **kwargs: build(reader, *args, **{**kwargs, "padding_side": padding})
        try:
            with torch.no_grad():
                return answer_loss(reader, encoder, examples, 4, QAPrompt())
        finally:
            del reader.build_inputs

    right, left = loss(batch, "right"), loss(batch, "left")
    torch.testing.assert_close(right, left)
    # Padding leaks nothing: the batch loss is the token-weighted mean of the unpadded rows' losses.
    alone = [loss([example], "right") for example in batch]
    counts = [len(example.target_ids) for example in batch]
    torch.testing.assert_close(right, sum(c * value for c, value in zip(counts, alone, strict=True)) / sum(counts))


def test_answer_loss_and_its_gradients_are_those_of_the_full_logits(tiny_backbone, data, tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(tiny_config(tmp_path, data, "comprexit", "sft"), tiny_backbone)
    reader = Reader(tiny_backbone)
    ids = tiny_backbone.tokenize([town(3)["text"], article(1)])
    batch = [TrainExample([ids[0]], "Who founded Town 3?", [11, 12, 13]), TrainExample([ids[1]], "Which river?", [14])]
    parameters = [p for p in encoder.trainable.parameters() if p.requires_grad]

    def loss_and_grads(loss_of):
        for parameter in parameters:
            parameter.grad = None
        loss = loss_of()
        loss.backward()
        return loss.detach(), [parameter.grad.clone() for parameter in parameters]

    def full_logits():
        inputs = reader.build_inputs(
            [example.question for example in batch],
            encoder.encode(batch, 4),
            [example.target_ids for example in batch],
            prompt=QAPrompt(),
            padding_side="right",
        )
        logits, labels = target_logits(reader, inputs)
        return F.cross_entropy(logits.float(), labels)

    torch.manual_seed(1)
    loss, grads = loss_and_grads(lambda: answer_loss(reader, encoder, batch, 4, QAPrompt()))
    torch.manual_seed(1)
    expected, expected_grads = loss_and_grads(full_logits)
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_batch_rows_are_right_padded_with_ignored_labels(tiny_backbone):
    reader = Reader(tiny_backbone)
    contexts = [torch.zeros(2, tiny_backbone.hidden_size), torch.zeros(9, tiny_backbone.hidden_size)]
    inputs = reader.build_inputs(["Who?", "Who?"], contexts, [[5], [6]], padding_side="right")
    assert inputs.attention_mask[0, 0] == 1 and inputs.attention_mask[0, -1] == 0
    assert (inputs.labels[inputs.attention_mask == 0] == IGNORE_INDEX).all()
    assert inputs.position_ids[0, : int(inputs.attention_mask[0].sum())].tolist() == list(
        range(int(inputs.attention_mask[0].sum()))
    )


# ---------------------------------------------------------------------------------------------
# Resume, bad steps, time budget.
# ---------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """Stands in for a killed run."""


def interrupted_on_call(n: int, function: Callable) -> Callable:
    """``function``, except that its ``n``-th call raises :class:`Interrupted` (a killed run)."""
    calls = iter(range(1, 10**6))

    def wrapper(*args, **kwargs):
        if next(calls) == n:
            raise Interrupted
        return function(*args, **kwargs)

    return wrapper


def test_resumed_run_equals_an_uninterrupted_one(tiny_backbone, data, tmp_path, monkeypatch):
    straight = tiny_config(tmp_path / "straight", data, max_steps=4, save_every=1)
    train(straight, tiny_backbone)

    resumed = tiny_config(tmp_path / "resumed", data, max_steps=4, save_every=1)
    real_loss = trainer.answer_loss
    monkeypatch.setattr(trainer, "answer_loss", interrupted_on_call(3, real_loss))  # step three
    with pytest.raises(Interrupted):
        train(resumed, tiny_backbone)
    checkpoint = Path(resumed.output_dir) / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert not (Path(resumed.output_dir) / "final").exists()
    monkeypatch.setattr(trainer, "answer_loss", real_loss)
    summary = train(resumed, tiny_backbone)

    assert summary["steps"] == 4
    expected = json.loads((Path(straight.output_dir) / "summary.json").read_text())
    for key in ("examples_seen", "target_tokens_seen", "skipped_steps"):
        assert summary[key] == expected[key]
    want = final_weights(straight)
    for name, tensor in final_weights(resumed).items():
        assert torch.equal(tensor, want[name]), name
    losses = [json.loads(line)["loss"] for line in (Path(resumed.output_dir) / "log.jsonl").read_text().splitlines()]
    straight_log = (Path(straight.output_dir) / "log.jsonl").read_text().splitlines()
    assert losses == [json.loads(line)["loss"] for line in straight_log]


def test_a_run_killed_while_saving_resumes_from_the_last_whole_checkpoint(tiny_backbone, data, tmp_path, monkeypatch):
    straight = tiny_config(tmp_path / "straight", data, max_steps=4, save_every=1)
    train(straight, tiny_backbone)

    # Killed after step 3's module was written, before its optimizer state: a torn save.
    killed = tiny_config(tmp_path / "killed", data, max_steps=4, save_every=1)
    real_write = checkpoints.atomic_write
    monkeypatch.setattr(checkpoints, "atomic_write", interrupted_on_call(3, real_write))  # the third save
    with pytest.raises(Interrupted):
        train(killed, tiny_backbone)
    checkpoint = Path(killed.output_dir) / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["files"] == "step-0000002"
    assert (checkpoint / "step-0000003" / "module").is_dir()  # the torn generation, named by nothing
    monkeypatch.setattr(checkpoints, "atomic_write", real_write)

    summary = train(killed, tiny_backbone)

    assert summary["steps"] == 4
    want = final_weights(straight)
    assert all(torch.equal(tensor, want[name]) for name, tensor in final_weights(killed).items())
    assert sorted(path.name for path in checkpoint.iterdir()) == ["state.json", "step-0000004"]


def test_a_checkpoint_saved_before_generations_still_resumes(tiny_backbone, data, tmp_path):
    # Pieces committed before checkpoints had generations keep module/ and optimizer.pt beside state.json.
    straight = tiny_config(tmp_path / "straight", data, max_steps=3)
    train(straight, tiny_backbone)
    old = tiny_config(tmp_path / "old", data, max_steps=3, piece_seconds=0.0)
    train(old, tiny_backbone)
    checkpoint = Path(old.output_dir) / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    for name in ("module", "optimizer.pt"):
        (checkpoint / state["files"] / name).rename(checkpoint / name)
    (checkpoint / state.pop("files")).rmdir()
    (checkpoint / "state.json").write_text(json.dumps(state))

    assert train(replace(old, piece_seconds=None), tiny_backbone)["steps"] == 3
    want = final_weights(straight)
    assert all(torch.equal(tensor, want[name]) for name, tensor in final_weights(old).items())
    assert sorted(path.name for path in checkpoint.iterdir()) == ["state.json", "step-0000003"]


def nan_on(steps: set[int]) -> Callable[..., torch.Tensor]:
    """The real loss, turned NaN on the given (0-based) calls."""
    calls = iter(range(10**6))

    def loss(*args, **kwargs) -> torch.Tensor:
        value = answer_loss(*args, **kwargs)
        return value * float("nan") if next(calls) in steps else value

    return loss


def test_a_non_finite_step_is_skipped_and_counted(tiny_backbone, data, tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "one-bad", data)
    before = initial_weights(config, tiny_backbone)
    monkeypatch.setattr(trainer, "answer_loss", nan_on({1}))
    summary = train(config, tiny_backbone)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 1
    assert json.loads((Path(config.output_dir) / "summary.json").read_text())["skipped_steps"] == 1
    after = final_weights(config)
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    assert any(not torch.equal(before[name], tensor) for name, tensor in after.items())

    # Nothing but bad steps: the weights are exactly the initial ones.
    config = tiny_config(tmp_path / "all-bad", data, max_steps=2)
    monkeypatch.setattr(trainer, "answer_loss", nan_on({0, 1}))
    assert train(config, tiny_backbone)["skipped_steps"] == 2
    for name, tensor in final_weights(config).items():
        assert torch.equal(before[name], tensor), name


def test_a_step_out_of_device_memory_is_skipped_and_the_run_goes_on(tiny_backbone, data, tmp_path, monkeypatch, caplog):
    config = tiny_config(tmp_path / "oom", data)
    before = initial_weights(config, tiny_backbone)
    calls = iter(range(10**6))

    def loss(*args, **kwargs) -> torch.Tensor:
        value = answer_loss(*args, **kwargs)
        if next(calls) == 1:
            value.backward(retain_graph=True)  # a partial gradient, as a pass that ran before the failing one
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 428.00 MiB.")
        return value

    monkeypatch.setattr(trainer, "answer_loss", loss)
    with caplog.at_level(logging.WARNING):
        summary = train(config, tiny_backbone)

    assert summary["steps"] == 3 and summary["skipped_steps"] == 1
    assert "Step 1: out of device memory, update skipped" in caplog.text
    assert math.isnan(json.loads((Path(config.output_dir) / "log.jsonl").read_text().splitlines()[1])["loss"])
    after = final_weights(config)
    assert any(not torch.equal(before[name], tensor) for name, tensor in after.items())
    # The failed step's partial gradient is dropped: the same weights as skipping that step for a NaN loss.
    skipped = tiny_config(tmp_path / "nan", data)
    monkeypatch.setattr(trainer, "answer_loss", nan_on({1}))
    train(skipped, tiny_backbone)
    for name, tensor in final_weights(skipped).items():
        assert torch.equal(after[name], tensor), name


def fake_clock(monkeypatch: pytest.MonkeyPatch, seconds_per_step: Callable[[int], float]) -> None:
    """Replace the trainer's clock: ``perf_counter`` is read once at the start and once per step."""

    def ticks() -> Iterator[float]:
        now, step = 0.0, 0
        while True:
            yield now
            step += 1
            now += seconds_per_step(step)

    clock = ticks()
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))


@pytest.mark.parametrize(
    ("budget", "seconds_per_step", "steps", "schedules"),
    [
        # Slow first steps (allocator, kernel selection) do not set the pace: steps 11-20 do.
        (100.0, lambda step: 5.0 if step <= 10 else 1.0, 60, [1000, 60]),
        # Refit at step 20 to the 5 affordable steps left.
        (25.0, lambda step: 1.0, 25, [1000, 25]),
        # Nothing affordable at the refit: still one more step (total_steps >= step + 1), then stop.
        (20.5, lambda step: 1.0, 21, [1000, 21]),
        # Slower after the refit: the budget is a hard limit all the same.
        (30.0, lambda step: 1.0 if step <= 20 else 3.0, 24, [1000, 30, 24]),
        # Slower from step 21: the refit at step 100 shortens the schedule again, at the new pace.
        (300.0, lambda step: 1.0 if step <= 20 else 2.0, 160, [1000, 300, 160]),
        # Faster from step 21 (another run on the GPU finished): the refit at step 100 lengthens it.
        (300.0, lambda step: 3.0 if step <= 20 else 1.0, 260, [1000, 100, 260]),
    ],
)
def test_time_budget_refits_the_schedule_and_stops(
    tiny_backbone, data, tmp_path, monkeypatch, budget, seconds_per_step, steps, schedules
):
    monkeypatch.setattr(trainer, "answer_loss", cheap_loss)
    seen: list[tuple[int, int]] = []
    real_lr_at = trainer.lr_at

    def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
        seen.append((step, total_steps))
        return real_lr_at(step, total_steps, config)

    monkeypatch.setattr(trainer, "lr_at", lr_at)
    fake_clock(monkeypatch, seconds_per_step)
    # The soft prompt is one tensor: up to 160 optimizer steps stay cheap.
    config = tiny_config(tmp_path / "budget", data, "full-tuned", max_steps=1000, time_budget_s=budget, log_every=1000)
    summary = train(config, tiny_backbone)

    assert summary["steps"] == steps and summary["wall_time_s"] >= budget
    assert all(total >= step + 1 for step, total in seen)  # the schedule never ends before the step
    assert list(dict.fromkeys(total for _, total in seen)) == schedules
    assert max(step for step, _ in seen) == steps - 1
    records = [json.loads(line) for line in (Path(config.output_dir) / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [steps]  # the last step is always logged


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone_dir(tiny_backbone, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("backbone")
    tiny_backbone.model.save_pretrained(directory)
    tiny_backbone.tokenizer.save_pretrained(directory)
    return directory


def test_cli_train_sft_smoke(backbone_dir, data, tmp_path, capsys):
    output = tmp_path / "cli"
    argv = ["train", "--stage", "sft", "--method", "comprexit", "--output-dir", output, "--backbone", backbone_dir]
    argv += ["--device", "cpu", "--data", data, "--ratios", "4", "--batch-size", "2", "--max-steps", "2"]
    argv += ["--warmup-steps", "1", "--max-distractors", "2", "--limit-per-family", "4"]
    assert main([str(arg) for arg in argv]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["method"] == "comprexit" and printed["stage"] == "sft" and printed["steps"] == 2
    assert {"final", "checkpoint", "summary.json", "log.jsonl"} <= {path.name for path in output.iterdir()}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["config"]["ratios"] == [4] and summary["config"]["limit_per_family"] == 4


def test_cli_refuses_to_pretrain_comi_before_loading_anything(tmp_path, capsys):
    argv = ["train", "--stage", "pretrain", "--method", "comi", "--output-dir", str(tmp_path / "x")]
    argv += ["--backbone", str(tmp_path / "no-such-backbone")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "comprexit-rag train: error:" in error and "--stage sft" in error
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# The real default backbone.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("passage_reconstruction", [0.0, 0.5])
def test_one_sft_step_on_the_real_backbone_moves_the_head(real_backbone, data, tmp_path, passage_reconstruction):
    config = tiny_config(
        tmp_path / "real",
        data,
        "comprexit",
        "sft",
        max_steps=1,
        lr=1e-3,
        text_share=0.0,
        passage_reconstruction_weight=passage_reconstruction,
    )
    before = initial_weights(config, real_backbone)
    summary = train(config, real_backbone)
    assert summary["steps"] == 1 and summary["skipped_steps"] == 0
    after = final_weights(config)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == list(before), f"unchanged: {sorted(set(before) - set(changed))}"
    record = json.loads((Path(config.output_dir) / "log.jsonl").read_text())
    if passage_reconstruction:  # an untrained head's slots: the passages read back at about no-context loss
        assert 0 < record["terms"]["passage_reconstruction"] < 20


def test_window_override_trains_and_saves_a_head_with_that_window(tiny_backbone, data, tmp_path):
    first = train(tiny_config(tmp_path / "w128", data, max_steps=1), tiny_backbone)
    assert first["config"]["window"] is None
    config = tiny_config(tmp_path / "w64", data, window=64, init_from=str(tmp_path / "w128" / "final"))
    train(config, tiny_backbone)
    head = ComprExITHead.from_pretrained(tmp_path / "w64" / "final")
    assert head.config.window == 64
    assert ComprExITHead.from_pretrained(tmp_path / "w128" / "final").config.window == 128


@pytest.mark.parametrize(("method", "window"), [("comprexit", 100), ("mean-pool", 64)])
def test_invalid_window_is_refused(tiny_backbone, data, tmp_path, method, window):
    with pytest.raises(InvalidInputError, match=r"window|segment_length"):
        config = tiny_config(tmp_path, data, method, window=window)
        build_encoder(config, tiny_backbone)


# ---------------------------------------------------------------------------------------------
# The reader adapter, trained with the head.
# ---------------------------------------------------------------------------------------------


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "reader_adapter" / "adapter_model.safetensors"))


def test_a_reader_adapter_trains_with_the_head_and_ships_with_it(make_tiny_backbone, data, tmp_path):
    backbone = make_tiny_backbone()
    frozen = {name: p.clone() for name, p in backbone.model.named_parameters()}
    config = tiny_config(tmp_path / "run", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
    summary = train(config, backbone)
    assert summary["reader_adapter"]["scope"] == "all"
    final = Path(config.output_dir) / "final"
    lora_b = [t for name, t in adapter_weights(final).items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it moved
    base = {name: p for name, p in backbone.model.named_parameters() if "lora_" not in name}
    assert all(torch.equal(p, frozen[name.replace(".base_layer", "")]) for name, p in base.items())

    # QA fine-tuning continues the same adapter (no new one is attached).
    sft = tiny_config(tmp_path / "sft", data, "comprexit", "sft", init_from=str(final), max_steps=1)
    train(sft, make_tiny_backbone())
    assert (Path(sft.output_dir) / "final" / "reader_adapter").is_dir()


def test_a_later_stage_can_widen_the_init_checkpoints_adapter(make_tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "run", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
    train(config, make_tiny_backbone())
    final = str(Path(config.output_dir) / "final")
    narrow = adapter_weights(Path(final))
    wide = tiny_config(tmp_path / "wide", data, "comprexit", "sft", init_from=final, adapter_rank=8, max_steps=1)
    summary = train(wide, make_tiny_backbone())
    assert summary["reader_adapter"]["parameters"] == 2 * sum(t.numel() for t in narrow.values())
    saved = json.loads((Path(wide.output_dir) / "final" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert saved["r"] == 8
    # Without adapter_rank a later stage continues the adapter as it is; a lower rank is refused.
    assert tiny_config(tmp_path / "same", data, "comprexit", "sft", init_from=final).adapter_rank is None
    with pytest.raises(InvalidInputError, match="set adapter_rank to 4 to continue it"):
        train(replace(wide, output_dir=str(tmp_path / "narrower"), adapter_rank=2), make_tiny_backbone())


def test_a_frozen_module_keeps_its_weights_while_the_adapter_learns(make_tiny_backbone, data, tmp_path):
    pretrain = tiny_config(tmp_path / "pretrain", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
    train(pretrain, make_tiny_backbone())
    start = Path(pretrain.output_dir) / "final"
    config = tiny_config(tmp_path / "sft", data, "comprexit", "sft", init_from=str(start), freeze_module=True)
    assert train(config, make_tiny_backbone())["skipped_steps"] == 0
    head = final_weights(config)
    assert head.keys() == final_weights(pretrain).keys()
    assert all(torch.equal(tensor, final_weights(pretrain)[name]) for name, tensor in head.items())
    moved = adapter_weights(Path(config.output_dir) / "final")
    assert any(not torch.equal(tensor, adapter_weights(start)[name]) for name, tensor in moved.items())

    # It resumes (the optimiser holds the adapter's group alone), and is refused where it means nothing.
    pieces = replace(config, output_dir=str(tmp_path / "pieces"), piece_seconds=0.0)
    assert [train(pieces, make_tiny_backbone())["steps"] for _ in range(2)] == [1, 2]
    with pytest.raises(InvalidInputError, match="set init_from"):
        tiny_config(tmp_path / "x", data, "comprexit", "sft", freeze_module=True)
    with pytest.raises(InvalidInputError, match="drop freeze_module"):
        tiny_config(
            tmp_path / "x", data, "full-lora", "sft", reader_adapter=True, init_from=str(start), freeze_module=True
        )
    without_adapter = tiny_config(tmp_path / "plain", data, "comprexit", "pretrain")
    train(without_adapter, make_tiny_backbone())
    plain = str(Path(without_adapter.output_dir) / "final")
    with pytest.raises(InvalidInputError, match="has none: set reader_adapter"):
        train(
            tiny_config(tmp_path / "y", data, "comprexit", "sft", init_from=plain, freeze_module=True),
            make_tiny_backbone(),
        )


def shipped_head_run(experiment: str, output: Path, data: Path, steps: int) -> list[str]:
    """``comprexit-rag train`` arguments for a committed experiment file on the real backbone from the shipped
    head, cut to ``steps`` steps of batch 2 on the tiny data directory."""
    argv = ["train", "--config", str(EXPERIMENTS / experiment), "--output-dir", str(output), "--device", "cpu"]
    argv += ["--init-from", str(SHIPPED_ADAPTER), "--max-steps", str(steps), "--batch-size", "2"]
    argv += ["--limit-per-family", "4", "--max-distractors", "2", "--data", str(data)]
    return [*argv, "--wikipedia", "wiki/enwiki_2015_AA_shard*.txt.gz"]


@pytest.mark.slow
def test_the_frozen_head_experiment_trains_the_shipped_heads_adapter_alone(data, tmp_path):
    output = tmp_path / "frozen"
    assert main(shipped_head_run("sft-4x-mixed-frozen-head.json", output, data, steps=1)) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["skipped_steps"] == 0 and summary["config"]["freeze_module"]
    head = load_state_dict(output / "final")
    shipped = load_state_dict(SHIPPED_ADAPTER)
    assert head.keys() == shipped.keys()
    assert all(torch.equal(head[name].float(), shipped[name].float()) for name in head)
    moved = float_adapter_weights(output / "final")
    start = float_adapter_weights(SHIPPED_ADAPTER)
    assert any(not torch.equal(tensor, start[name]) for name, tensor in moved.items())


def test_two_runs_with_fresh_adapters_share_one_backbone(make_tiny_backbone, data, tmp_path):
    # A notebook or a benchmark trains several runs in one process, on one loaded backbone.
    backbone = make_tiny_backbone()
    for run in ("first", "second"):
        config = tiny_config(tmp_path / run, data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
        assert train(config, backbone)["finished"]
    first, second = (adapter_weights(tmp_path / run / "final") for run in ("first", "second"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)  # same seed, same start, same run


@pytest.mark.parametrize(("method", "stage"), [("comprexit", "pretrain"), ("full-lora", "sft")])
def test_a_run_in_pieces_equals_an_uninterrupted_one(make_tiny_backbone, data, tmp_path, method, stage):
    options = {"reader_adapter": True, "adapter_rank": 4, "max_steps": 3}
    straight = tiny_config(tmp_path / "straight", data, method, stage, **options)
    train(straight, make_tiny_backbone())
    # A zero-second piece ends after one step; each rerun (a new process in practice) continues.
    pieces = tiny_config(tmp_path / "pieces", data, method, stage, piece_seconds=0.0, **options)
    steps = [train(pieces, make_tiny_backbone())["steps"] for _ in range(3)]
    assert steps == [1, 2, 3]
    assert final_weights(pieces).keys() == final_weights(straight).keys()
    for name, tensor in final_weights(pieces).items():
        assert torch.equal(tensor, final_weights(straight)[name]), name
    want = adapter_weights(Path(straight.output_dir) / "final")
    for name, tensor in adapter_weights(Path(pieces.output_dir) / "final").items():
        assert torch.equal(tensor, want[name]), name


def test_a_resumed_run_rebuilds_its_module_from_the_checkpoint(make_tiny_backbone, data, tmp_path):
    # The first piece starts from a calibrated head (its standardisation buffers are not in a fresh
    # head); the next pieces need not repeat --init-from: the checkpoint is the whole state.
    options = {"reader_adapter": True, "adapter_rank": 4, "max_steps": 3}
    calibrated = tiny_config(tmp_path / "calibrated", data, "comprexit", "pretrain", standardize_layers=True, **options)
    train(replace(calibrated, max_steps=1), make_tiny_backbone())
    start = str(Path(calibrated.output_dir) / "final")
    config = tiny_config(tmp_path / "pieces", data, "comprexit", "pretrain", piece_seconds=0.0, **options)
    steps = [train(replace(config, init_from=start), make_tiny_backbone())["steps"]]
    steps += [train(config, make_tiny_backbone())["steps"] for _ in range(2)]
    assert steps == [1, 2, 3]
    assert "depth.layer_scale" in final_weights(config)


def test_a_run_resumes_after_its_init_checkpoint_is_gone(make_tiny_backbone, data, tmp_path):
    # Session 26: a QA run started from a generation of its own checkpoint folder (the adapter came from
    # there, not from reader_adapter); the next save removed that generation, and the third piece built
    # no adapter and refused to resume.
    first = tiny_config(tmp_path / "first", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
    train(replace(first, max_steps=1), make_tiny_backbone())
    start = tmp_path / "start"
    shutil.copytree(Path(first.output_dir) / "final", start)
    straight = tiny_config(tmp_path / "straight", data, "comprexit", "sft", init_from=str(start), max_steps=3)
    train(straight, make_tiny_backbone())
    pieces = replace(straight, output_dir=str(tmp_path / "pieces"), piece_seconds=0.0)
    assert train(pieces, make_tiny_backbone())["steps"] == 1
    shutil.rmtree(start)
    assert [train(pieces, make_tiny_backbone())["steps"] for _ in range(2)] == [2, 3]
    want = adapter_weights(Path(straight.output_dir) / "final")
    got = adapter_weights(Path(pieces.output_dir) / "final")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_a_run_saved_on_a_gpu_resumes_on_a_cpu(make_tiny_backbone, data, tmp_path, monkeypatch):
    # Session 20: a QA piece trained on an H100 did not resume here ("Attempting to deserialize object on a
    # CUDA device"). Its optimizer file is made the same: storages tagged as on cuda:0.
    config = tiny_config(tmp_path / "run", data, "full-lora", "sft", reader_adapter=True, adapter_rank=4, max_steps=2)
    train(replace(config, piece_seconds=0.0), make_tiny_backbone())
    checkpoint = Path(config.output_dir) / "checkpoint"
    optimizer_file = checkpoint_files(checkpoint, read_state(checkpoint)) / "optimizer.pt"
    state = torch.load(optimizer_file, weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, optimizer_file)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train(config, make_tiny_backbone())["steps"] == 2


def test_resuming_on_other_data_or_without_the_adapter_is_refused(make_tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "run", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4)
    train(replace(config, piece_seconds=0.0), make_tiny_backbone())
    with pytest.raises(InvalidInputError, match="trained on data"):
        train(replace(config, max_pretrain_tokens=300), make_tiny_backbone())
    with pytest.raises(InvalidInputError, match="with a reader adapter"):
        train(replace(config, reader_adapter=False), make_tiny_backbone())


# ---------------------------------------------------------------------------------------------
# The full-lora baseline: the raw passages through a reader adapter, and nothing else trained.
# ---------------------------------------------------------------------------------------------


def test_full_lora_trains_its_reader_adapter_and_nothing_else(make_tiny_backbone, data, tmp_path):
    backbone = make_tiny_backbone()
    frozen = {name: p.clone() for name, p in backbone.model.named_parameters()}
    config = tiny_config(tmp_path / "run", data, "full-lora", "sft", reader_adapter=True, adapter_rank=4)
    batch, _ = make_sampler(config, backbone)[0](random.Random(0))
    (context, *_) = build_encoder(config, backbone).encode(batch, 4)
    assert context.shape[0] >= sum(len(ids) for ids in batch[0].passage_ids)  # the raw passages, nothing else

    summary = train(config, backbone)

    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert summary["reader_adapter"]["scope"] == "all" and summary["reader_adapter"]["parameters"] > 0
    final = Path(config.output_dir) / "final"
    assert json.loads((final / "config.json").read_text())["kind"] == "full-lora"
    assert final_weights(config) == {}  # its module has no weights: the adapter is what trained
    saved = adapter_weights(final)
    assert all(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name)  # B starts at zero: it moved
    base = {name: p for name, p in backbone.model.named_parameters() if "lora_" not in name}
    assert all(torch.equal(p, frozen[name.replace(".base_layer", "")]) for name, p in base.items())
    loaded = FullLoRA.load_reader_adapter(final, make_tiny_backbone())
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.state_dict().items())


def test_full_lora_options_are_checked_before_anything_loads(data, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="trains a reader adapter and nothing else"):
        tiny_config(tmp_path, data, "full-lora", "sft")
    with pytest.raises(InvalidInputError, match="no slots: its adapter needs adapter_scope 'all'"):
        tiny_config(tmp_path, data, "full-lora", "sft", reader_adapter=True, adapter_scope="slots")
    with pytest.raises(InvalidInputError, match="Distillation"):
        tiny_config(tmp_path, data, "full-lora", "sft", reader_adapter=True, distill_weight=0.5)
    with pytest.raises(InvalidInputError, match="train full-lora with --stage sft"):
        tiny_config(tmp_path, data, "full-lora", "pretrain", reader_adapter=True)
    argv = ["train", "--method", "full-lora", "--stage", "sft", "--output-dir", str(tmp_path / "x"), "--device", "cpu"]
    assert main(argv) == 2
    assert "set reader_adapter (--reader-adapter)" in capsys.readouterr().err


def test_reading_passes_group_examples_by_length_within_the_token_budget():
    def example(passage: int, target: int = 2) -> TrainExample:
        return TrainExample(question="q", passage_ids=[[7] * passage], target_ids=[8] * target)

    def padded(passes: list[list[TrainExample]]) -> int:
        return sum(len(part) * max(len(e.passage_ids[0]) + len(e.target_ids) for e in part) for part in passes)

    batch = [example(4), example(28), example(3), example(28), example(3), example(4)]  # sizes 6 30 5 30 5 6
    assert reading_passes(batch, None) == [batch]
    passes = reading_passes(batch, 60)
    assert [len(part) for part in passes] == [4, 2]  # the four short ones together, the two long ones together
    assert sorted(map(id, (e for part in passes for e in part))) == sorted(map(id, batch))  # each example once
    assert all(padded([part]) <= 60 for part in passes)
    assert padded(passes) == 4 * 6 + 2 * 30  # cut in batch order: [6, 30] [5, 30] [5, 6], 132 padded tokens
    assert [len(part) for part in reading_passes(batch, 1)] == [1] * 6  # one example at least


@pytest.mark.parametrize(("method", "options"), [("full-lora", {}), ("comprexit", {"distill_weight": 0.5})])
def test_reading_a_batch_in_passes_gives_the_loss_and_gradient_of_reading_it_at_once(
    make_tiny_backbone, data, tmp_path, monkeypatch, method, options
):
    clip = torch.nn.utils.clip_grad_norm_
    gradients: list[list[torch.Tensor]] = []

    def recording_clip(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        gradients.append([p.grad.clone() for p in parameters])
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    options = {**options, "reader_adapter": True, "adapter_rank": 4, "batch_size": 4, "max_steps": 2}
    losses = []
    for name, max_pass_tokens in (("whole", None), ("passes", 1)):  # 1 token: one example per pass
        config = tiny_config(tmp_path / name, data, method, "sft", max_pass_tokens=max_pass_tokens, **options)
        train(config, make_tiny_backbone())
        log = (Path(config.output_dir) / "log.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["loss"] for line in log])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # The first step's gradients (the second starts from weights that differ by rounding), equal up to the
    # float32 summation order.
    whole, passes = (torch.cat([g.flatten() for g in gradients[run]]) for run in (0, 2))
    assert whole.norm() > 0 and (passes - whole).norm() <= 1e-5 * whole.norm()
    with pytest.raises(InvalidInputError, match="max_pass_tokens must be a positive integer"):
        replace(config, max_pass_tokens=0)


def test_a_full_lora_checkpoint_is_read_through_its_adapter(make_tiny_backbone, backbone_dir, data, tmp_path, capsys):
    # A checkpoint whose adapter changes the answers (a trained one starts from B = 0).
    trained_on = make_tiny_backbone()
    adapter = ReaderAdapter.create(trained_on, ReaderAdapterConfig(rank=4))
    generator = torch.Generator().manual_seed(0)
    adapter.load_state_dict(
        {
            name: torch.randn(t.shape, generator=generator) * 0.5 if "lora_B" in name else t
            for name, t in adapter.state_dict().items()
        }
    )
    final = tmp_path / "final"
    save_module_and_adapter(final, FullLoRA.for_backbone(trained_on), adapter)
    qa_file = str(data / "hotpotqa" / "dev_distractor_350.jsonl")
    examples = load_examples(qa_file, "hotpotqa", "all", "distractor", None)

    backbone = make_tiny_backbone()
    method = build_method("full-lora", backbone, 4, final)
    assert method.reader_adapter is not None and method.reader_adapter.backbone is backbone

    def answers(method: EvalMethod, adapter: ReaderAdapter | None) -> list[str]:
        reader = Reader(backbone, max_new_tokens=6, adapter=adapter)
        return evaluate(method, reader, examples, show_progress=False).predictions

    adapted = answers(method, method.reader_adapter)
    assert adapted != answers(FullText(backbone), None)  # the frozen reader on the same text answers otherwise
    assert adapted == answers(FullText(backbone), method.reader_adapter)  # the text, read through the adapter
    with pytest.raises(AdapterMismatchError, match="full-lora was trained to be read through reader adapter"):
        answers(method, None)

    # `comprexit-rag eval` reads through the checkpoint's adapter, and refuses to read without it.
    assert cli_eval_answers("full-lora", final, backbone_dir, qa_file, tmp_path, capsys) == adapted


def cli_eval_answers(method: str, checkpoint: Path, backbone_dir: Path, qa_file: str, tmp_path: Path, capsys) -> list:
    """``comprexit-rag eval --method M --checkpoint C``'s answers (6 new tokens), after checking that the same call
    with ``--reader-adapter none`` is refused: the checkpoint's method is read through its adapter or not at all."""
    predictions = tmp_path / "predictions.jsonl"
    argv = ["eval", "--data", qa_file, "--format", "hotpotqa", "--split", "all", "--method", method]
    argv += ["--checkpoint", str(checkpoint), "--backbone", str(backbone_dir), "--device", "cpu"]
    argv += ["--max-new-tokens", "6"]
    assert main([*argv, "--reader-adapter", "none"]) == 2
    assert "leave out --reader-adapter" in capsys.readouterr().err
    assert main([*argv, "--json", "--predictions", str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == method
    return [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]


def test_a_full_lora_checkpoint_without_its_own_adapter_is_refused(make_tiny_backbone, tmp_path):
    backbone = make_tiny_backbone()
    module = FullLoRA.for_backbone(backbone)
    module.save_pretrained(tmp_path / "module-only")
    with pytest.raises(CheckpointError, match="has no reader_adapter/"):
        build_method("full-lora", backbone, 4, tmp_path / "module-only")
    with pytest.raises(CheckpointError, match="No default full-lora checkpoint is shipped"):
        build_method("full-lora", backbone)
    # A head's adapter copied in beside the module (it was trained with that head, not for the raw text).
    adapter = ReaderAdapter.create(make_tiny_backbone(), ReaderAdapterConfig(rank=2))
    adapter.paired_head = "0123456789abcdef"
    module.save_pretrained(tmp_path / "head-adapter")
    adapter.save_pretrained(tmp_path / "head-adapter" / ADAPTER_DIR)
    with pytest.raises(AdapterMismatchError, match="was trained with module 0123456789abcdef"):
        build_method("full-lora", backbone, 4, tmp_path / "head-adapter")


@pytest.mark.slow
def test_full_lora_trains_on_the_real_backbone_and_answers_through_eval(data, tmp_path, capsys):
    # The committed experiment file, cut to 2 steps of batch 2 on the tiny data directory; the CLI loads
    # its own copy of the default backbone (the shared test copy must keep its one adapter).
    output = tmp_path / "full-lora"
    argv = ["train", "--config", str(EXPERIMENTS / "baseline-full-lora-sft.json"), "--output-dir", str(output)]
    argv += ["--max-steps", "2", "--batch-size", "2", "--limit-per-family", "4", "--max-distractors", "2"]
    argv += ["--wikipedia", "wiki/enwiki_2015_AA_shard*.txt.gz", "--data", str(data), "--device", "cpu"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["method"], printed["stage"], printed["steps"]) == ("full-lora", "sft", 2)
    assert all(math.isfinite(json.loads(line)["loss"]) for line in (output / "log.jsonl").read_text().splitlines())
    final = output / "final"

    # The same adapter budget as the shipped ComprExIT head's: LoRA r16 on every linear layer.
    def budget(directory: Path) -> tuple[int, float, list[str], int]:
        lora = json.loads((directory / ADAPTER_DIR / "adapter_config.json").read_text())
        weights = float_adapter_weights(directory)
        return lora["r"], lora["lora_alpha"], sorted(lora["target_modules"]), sum(t.numel() for t in weights.values())

    assert budget(final) == budget(SHIPPED_ADAPTER)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["reader_adapter"] == {"parameters": budget(final)[3], "scope": "all"}

    # The checkpoint reloads with its adapter onto a fresh copy of the backbone and answers through it.
    backbone = Backbone.from_pretrained(device="cpu")
    method = build_method("full-lora", backbone, 4, final)
    saved = float_adapter_weights(final)
    assert all(torch.equal(t, saved[name]) for name, t in method.reader_adapter.state_dict().items())
    qa_file = str(data / "hotpotqa" / "dev_distractor_350.jsonl")
    examples = load_examples(qa_file, "hotpotqa", "all", "distractor", None)
    reader = Reader(backbone, max_new_tokens=8, adapter=method.reader_adapter)
    result = evaluate(method, reader, examples, show_progress=False)
    assert result.n == 2 and any(prediction.strip() for prediction in result.predictions)

    # `comprexit-rag eval` (its own backbone, the adapter from the checkpoint) answers the same.
    predictions = tmp_path / "predictions.jsonl"
    argv = ["eval", "--data", qa_file, "--format", "hotpotqa", "--split", "all", "--method", "full-lora"]
    argv += ["--checkpoint", str(final), "--device", "cpu", "--max-new-tokens", "8", "--json"]
    assert main([*argv, "--predictions", str(predictions)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["method"] == "full-lora" and scores["n"] == 2
    assert [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()] == result.predictions


def float_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The reader adapter weights of a checkpoint directory in float32 (a shipped adapter may be saved in bfloat16)."""
    return {name: tensor.float() for name, tensor in adapter_weights(directory).items()}


# ---------------------------------------------------------------------------------------------
# COMI with a reader adapter: trained, saved, loaded, recorded with its slots, read through in evaluation.
# ---------------------------------------------------------------------------------------------

QUESTION = "Who founded Town 3?"


def comi_run(backbone: Backbone, data: Path, output: Path, steps: int = 2) -> Path:
    """A few COMI QA steps with a rank-4 reader adapter; the run's final/ directory."""
    config = tiny_config(output, data, "comi", "sft", reader_adapter=True, adapter_rank=4, max_steps=steps)
    summary = train(config, backbone)
    assert summary["reader_adapter"]["scope"] == "all" and summary["reader_adapter"]["parameters"] > 0
    return output / "final"


def test_a_comi_merger_trained_with_a_reader_adapter_is_read_through_it(
    make_tiny_backbone, backbone_dir, data, tmp_path, capsys
):
    final = comi_run(make_tiny_backbone(), data, tmp_path / "comi")
    saved = adapter_weights(final)
    assert any(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name)  # B starts at zero: it trained

    # The compressor attaches the checkpoint's adapter; the slots name it (their fingerprint is the merger's).
    backbone = make_tiny_backbone()
    compressor = COMICompressor.from_pretrained(final, backbone)
    adapter = compressor.reader_adapter
    assert adapter is not None and adapter.backbone is backbone
    assert all(torch.equal(t, saved[name]) for name, t in adapter.state_dict().items())
    assert adapter.paired_head == head_digest(compressor.merger)
    assert compressor.fingerprint == COMICompressor(backbone, compressor.merger).fingerprint
    soft = compressor.compress([town(3)["text"]], query=QUESTION)
    assert soft.reader_adapter == adapter.digest
    assert isinstance(Reader(backbone, max_new_tokens=3, adapter=adapter).generate(QUESTION, soft), str)
    with pytest.raises(AdapterMismatchError, match="this reader has none"):
        Reader(backbone, max_new_tokens=3, adapter=None).generate(QUESTION, soft)

    # Evaluation builds the reader with it, and refuses to score COMI without it.
    qa_file = str(data / "hotpotqa" / "dev_distractor_350.jsonl")
    examples = load_examples(qa_file, "hotpotqa", "all", "distractor", None)
    method = build_method("comi", backbone, 4, final)
    assert method.reader_adapter is not None and method.reader_adapter.digest == adapter.digest
    reader = Reader(backbone, max_new_tokens=6, adapter=method.reader_adapter)
    adapted = evaluate(method, reader, examples, show_progress=False).predictions
    with pytest.raises(AdapterMismatchError, match="comi was trained to be read through reader adapter"):
        evaluate(method, Reader(backbone, max_new_tokens=6, adapter=None), examples, show_progress=False)

    # `comprexit-rag eval --method comi --checkpoint` reads through it too (its own backbone, the same answers).
    assert cli_eval_answers("comi", final, backbone_dir, qa_file, tmp_path, capsys) == adapted


def test_a_comi_merger_without_an_adapter_loads_and_reads_as_before(make_tiny_backbone, data, tmp_path):
    backbone = make_tiny_backbone()
    merger = COMIMerger.for_backbone(backbone)
    merger.save_pretrained(tmp_path / "merger")
    compressor = COMICompressor.from_pretrained(tmp_path / "merger", backbone)
    assert compressor.reader_adapter is None and not backbone.reader_adapters
    # The fingerprint is the merger's alone, as it always was, and the slots carry no adapter mark.
    digest = state_digest(merger.config.to_dict(), merger.state_dict(), salt=backbone.fingerprint.digest)
    assert compressor.fingerprint == f"comi-{digest}"
    soft = compressor.compress([town(3)["text"]], query=QUESTION)
    assert soft.reader_adapter is None
    method = build_method("comi", backbone, 4, tmp_path / "merger")
    assert method.reader_adapter is None
    examples = load_examples(str(data / "hotpotqa" / "dev_distractor_350.jsonl"), "hotpotqa", "all", "distractor", None)
    assert evaluate(method, Reader(backbone, max_new_tokens=3, adapter=None), examples, show_progress=False).n == 2


def test_a_comi_adapter_of_another_merger_or_backbone_is_refused(make_tiny_backbone, data, tmp_path):
    final = comi_run(make_tiny_backbone(), data, tmp_path / "comi", steps=1)
    # Another merger saved over the run's, beside the run's adapter (trained with the first one).
    mixed = tmp_path / "mixed"
    shutil.copytree(final, mixed)
    other = COMIMerger.for_backbone(make_tiny_backbone())
    with torch.no_grad():
        other.projector.net[0].weight.add_(1.0)
    other.save_pretrained(mixed)
    with pytest.raises(AdapterMismatchError, match="was trained with module"):
        COMICompressor.from_pretrained(mixed, make_tiny_backbone())
    # Slots made for the run's adapter, read through another adapter.
    backbone = make_tiny_backbone()
    soft = COMICompressor.from_pretrained(final, backbone).compress([town(3)["text"]], query=QUESTION)
    stranger = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=2), name="stranger")
    with pytest.raises(AdapterMismatchError, match="Read them with the adapter shipped with their head"):
        Reader(backbone, max_new_tokens=3, adapter=stranger).generate(QUESTION, soft)


@pytest.mark.slow
def test_comi_baseline_trains_on_the_real_backbone_with_the_heads_adapter_budget(data, tmp_path):
    # The committed experiment file, cut to 1 step of batch 2 on the tiny data directory; the CLI loads
    # its own copy of the default backbone (the shared test copy must keep its one adapter).
    output = tmp_path / "comi"
    argv = ["train", "--config", str(EXPERIMENTS / "baseline-comi-sft.json"), "--output-dir", str(output)]
    argv += ["--max-steps", "1", "--batch-size", "2", "--limit-per-family", "4", "--max-distractors", "2"]
    argv += ["--wikipedia", "wiki/enwiki_2015_AA_shard*.txt.gz", "--data", str(data), "--device", "cpu"]
    assert main(argv) == 0
    final = output / "final"
    lora = json.loads((final / ADAPTER_DIR / "adapter_config.json").read_text())
    shipped = json.loads((SHIPPED_ADAPTER / ADAPTER_DIR / "adapter_config.json").read_text())
    assert (lora["r"], lora["lora_alpha"], sorted(lora["target_modules"])) == (
        shipped["r"],
        shipped["lora_alpha"],
        sorted(shipped["target_modules"]),
    )
    backbone = Backbone.from_pretrained(device="cpu")
    compressor = COMICompressor.from_pretrained(final, backbone)
    soft = compressor.compress([town(3)["text"]], query=QUESTION)
    assert soft.reader_adapter == compressor.reader_adapter.digest
    answer = Reader(backbone, max_new_tokens=4, adapter=compressor.reader_adapter).generate(QUESTION, soft)
    assert isinstance(answer, str)


def test_cli_train_reads_an_experiment_file_and_flags_override_it(backbone_dir, data, tmp_path, capsys):
    experiment = tmp_path / "experiment.json"
    experiment.write_text(
        json.dumps(
            {
                "method": "comprexit",
                "stage": "sft",
                "ratios": [4],
                "batch_size": 2,
                "max_steps": 3,
                "limit_per_family": 4,
            }
        )
    )
    code = main(
        [
            "train",
            "--config",
            str(experiment),
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
            "--backbone",
            str(backbone_dir),
            "--data",
            str(data),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["config"]["ratios"] == [4] and summary["config"]["batch_size"] == 2
    experiment.write_text(json.dumps({"stage": "sft", "learning_rate": 1}))
    assert main(["train", "--config", str(experiment), "--output-dir", str(tmp_path / "x")]) != 0
    assert "unknown training options ['learning_rate']" in capsys.readouterr().err


def test_distillation_adds_the_kl_to_the_full_text_reader(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "d", data, "comprexit", "pretrain", reconstruction_prob=1.0, distill_weight=0.5)
    encoder = build_encoder(config, tiny_backbone)
    sample, _ = make_sampler(config, tiny_backbone)
    batch, prompt = sample(random.Random(0))
    reader = Reader(tiny_backbone, adapter=None)
    plain = answer_loss(reader, encoder, batch, 4, prompt)
    distilled = losses.distilled_loss(reader, encoder, batch, 4, prompt, 0.5)
    assert distilled.item() > plain.item()  # an untrained head's slots are not the text: KL > 0
    distilled.backward()
    assert all(p.grad is not None for p in encoder.trainable.parameters() if p.requires_grad)
    summary = train(config, tiny_backbone)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    with pytest.raises(InvalidInputError, match="Distillation"):
        tiny_config(tmp_path / "x", data, "full-tuned", "sft", distill_weight=1.0)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.json")), ids=lambda path: path.stem)
def test_every_committed_experiment_file_is_a_valid_training_config(path, tmp_path):
    # What the GPU script trains from: a typo (an unknown option, a bad choice, options that do not go
    # together) should fail here, not minutes into a GPU session.
    options = json.loads(path.read_text())
    if options.get("freeze_module"):  # started from a checkpoint, as the GPU script's SFT_INIT gives it
        options["init_from"] = str(tmp_path / "start")
    config = TrainConfig(**{"method": "comprexit", **options, "output_dir": str(tmp_path)})
    assert config.stage == options["stage"]


def test_an_experiment_file_gets_the_choices_a_flag_gets(data, tmp_path, capsys):
    # argparse checks the choices of options given as flags; values from an experiment file reach
    # TrainConfig directly, which checks them itself.
    with pytest.raises(InvalidInputError, match="adapter_scope must be one of all, slots, got 'text'"):
        tiny_config(tmp_path / "x", data, "comprexit", "sft", adapter_scope="text")
    experiment = tmp_path / "run.json"
    experiment.write_text(json.dumps({"stage": "sft", "reader_adapter": True, "adapter_scope": "text"}))
    assert main(["train", "--config", str(experiment), "--output-dir", str(tmp_path / "y")]) != 0
    assert "adapter_scope must be one of all, slots, got 'text'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # refused before anything is written


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def test_reading_tasks_ask_what_only_the_compressed_window_holds(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "r", data, "comprexit", "pretrain", reading_task_prob=1.0, batch_size=16)
    sample, _ = make_sampler(config, tiny_backbone)
    stop = answer_end_token_id(tiny_backbone.tokenizer)
    kinds = set()
    for seed in range(3):
        batch, prompt = sample(random.Random(seed))
        assert isinstance(prompt, QAPrompt) and len(batch) == 16
        for example in batch:
            (window,) = example.passage_ids
            answer = example.target_ids[:-1]
            assert example.target_ids[-1] == stop and 3 <= len(answer) <= 16
            assert contains(window, answer)  # the answer is in the window the compressor reads
            kinds.add(example.question.split()[0])
            assert tiny_backbone.tokenizer.decode(answer).strip() not in ("", example.question)
    assert kinds == {"Fill", "In"}  # both tasks occur


def test_qa_tuning_can_keep_a_share_of_pretraining_steps(tiny_backbone, data, tmp_path):
    config = tiny_config(tmp_path / "s", data, "comprexit", "sft", text_share=0.5, reconstruction_prob=1.0)
    sample, identity = make_sampler(config, tiny_backbone)
    prompts = [type(sample(random.Random(seed))[1]) for seed in range(40)]
    assert {QAPrompt, ReconstructionPrompt} == set(prompts)
    assert 10 <= prompts.count(ReconstructionPrompt) <= 30 and "text" in identity


# ---------------------------------------------------------------------------------------------
# Compiled decoder layers (compile_layers): the same losses and gradients, a few graphs in all.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dynamo_counters() -> Iterator[dict]:
    """torch._dynamo's counters, from a fresh cache: no graph of another test's backbone, and every
    test's compilations counted against the recompile limit (past it, dynamo runs a layer eagerly)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def batch_gradients(reader: Reader, encoder, batches: list) -> list[tuple[float, list[torch.Tensor]]]:
    """Per batch: the distilled loss (ratio 4) and its gradients in the head's and the adapter's weights."""
    parameters = [p for p in encoder.trainable.parameters() if p.requires_grad] + reader.adapter.parameters()
    results = []
    for batch, prompt in batches:
        loss = losses.distilled_loss(reader, encoder, batch, 4, prompt, 0.5)
        results.append((loss.item(), torch.autograd.grad(loss, parameters)))
    return results


@pytest.mark.parametrize("scope", ["all", "slots"])
def test_compiled_layers_give_the_losses_and_gradients_of_eager_ones(
    make_tiny_backbone, data, tmp_path, dynamo_counters, scope
):
    # A distilled step reads with every state of the adapter: off in the frozen pass that feeds the head, on
    # in the reading pass and in the teacher's (without gradients); a slots-scope one only at slot positions.
    backbone = make_tiny_backbone()
    config = tiny_config(
        tmp_path / "c", data, "comprexit", "pretrain", reader_adapter=True, adapter_rank=4, adapter_scope=scope,
        batch_size=3, distill_weight=0.5, context_lengths=[24, 40, 56],
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = build_encoder(config, backbone)
    adapter = trainer.build_reader_adapter(config, backbone)
    for parameter in adapter.parameters():  # B starts at zero: the adapter would change nothing
        torch.nn.init.normal_(parameter.data, std=0.2)
    reader = Reader(backbone, adapter=adapter)
    sample, _ = make_sampler(config, backbone)
    batches = [sample(random.Random(seed)) for seed in range(4)]
    batches.append((batches[0][0][:2], batches[0][1]))  # another batch size
    # Lengths never seen before, once the first batches have compiled a graph for each state of the passes.
    other_lengths, _ = make_sampler(replace(config, context_lengths=[32, 48]), backbone)
    batches += [other_lengths(random.Random(seed)) for seed in range(3)]

    eager = batch_gradients(reader, encoder, batches)
    # aot_eager: dynamo's graphs and their backward, run by aten operators. What could go wrong here (guards
    # on the adapter's switch and slot mask, graph breaks, gradients through the graphs) goes wrong with it;
    # inductor's kernels are tested by test_a_compiled_run_trains_as_an_eager_one.
    with backbone.compiled_layers(backend="aot_eager"):
        compiled = batch_gradients(reader, encoder, batches[:5])
        graphs = dynamo_counters["stats"]["unique_graphs"]
        compiled += batch_gradients(reader, encoder, batches[5:])

    assert not dynamo_counters["graph_break"]
    assert dynamo_counters["stats"]["unique_graphs"] == graphs > 0  # new lengths compiled nothing
    for (eager_loss, eager_gradients), (loss, gradients) in zip(eager, compiled, strict=True):
        assert loss == pytest.approx(eager_loss, rel=1e-6)
        # Only the order of float32 sums differs (the compiled backward adds up layers and positions in another
        # order): about 1e-6 of a gradient's norm, or of the whole gradient's where one cancels out to rounding
        # noise. An ignored term (the adapter, its slot mask) would move it by a good share of it.
        scale = torch.cat([gradient.flatten() for gradient in eager_gradients]).norm()
        for expected, actual in zip(eager_gradients, gradients, strict=True):
            assert (actual - expected).norm() <= 1e-4 * expected.norm() + 1e-6 * scale
    blocks = [block for layer in backbone.model.model.layers for block in layer.children()]
    assert all(block.forward.__func__ is type(block).forward for block in blocks)  # eager again


@pytest.mark.slow  # inductor compiles its C++ kernels: over a minute on two cores
def test_a_compiled_run_trains_as_an_eager_one(make_tiny_backbone, data, tmp_path, dynamo_counters):
    options = {"reader_adapter": True, "adapter_rank": 4, "adapter_scope": "slots", "distill_weight": 0.5}
    eager = tiny_config(tmp_path / "eager", data, "comprexit", "pretrain", **options)
    compiled = replace(eager, output_dir=str(tmp_path / "compiled"), compile_layers=True)
    train(eager, make_tiny_backbone())
    train(compiled, make_tiny_backbone())

    assert dynamo_counters["stats"]["unique_graphs"] > 0 and not dynamo_counters["graph_break"]
    losses = [
        [json.loads(line)["loss"] for line in (Path(run.output_dir) / "log.jsonl").read_text().splitlines()]
        for run in (eager, compiled)
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # the logged losses are rounded to 4 decimals
    for name, tensor in final_weights(compiled).items():
        torch.testing.assert_close(tensor, final_weights(eager)[name], rtol=1e-3, atol=1e-4)
