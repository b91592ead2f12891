"""Would more labelled questions close the slots' gap to the raw text? What training on a question adds.

Every QA stage draws its batches as a function of (seed, step) alone (``trainer.draw_batch``), so the
questions a run trained on, and how often, can be replayed without a GPU from its experiment files and
step counts. Its training questions then split into those it drew and those it never drew, from the same
file and distribution: the F1 difference between the two groups is what training on a question adds
beyond what carries over to new ones. Two readers trained on the same batches (the slots, and ``full-lora``
on the raw text), compared question by question, say whether training on a question narrows the slots'
deficit to the text: if it does, more labelled questions would close it; if the deficit is the same on
questions both trained on and on questions neither saw, they would not.

The stages are replayed with the trainer's own sampler (its QA set and text stream, cached after the first
build), and the target tokens of every replayed batch are counted next to the run's own count (its
summary's ``target_tokens_seen``): batches other than the run's would be far off it. Predictions come from
``comprexit-rag eval --split train --predictions F`` (and the same for closed-book, another question's
passage, another reader, or the dev split); F1 is grouped by how often, and in which stage, the stages drew
each question, and ``--difference B A`` groups B's F1 minus A's question by question::

    python research/seen_questions.py \\
        --stage experiments/reader_adapter/sft-4x-mixed.json:918:761001 \\
        --stage experiments/reader_adapter/sft-4x-mixed-continue-full-lora-teacher-b128.json:230:841858 \\
        --predictions slots=P1.jsonl full-lora=P2.jsonl --difference full-lora slots --out F.json

A stage is ``CONFIG:STEPS[:TARGET_TOKENS]``: the experiment's stage file, the steps it ran, and the
``target_tokens_seen`` of its summary (compared when given). Session 39's command, with every prediction
file, is in ``benchmarks/results/reader_adapter/session39/cpu/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import statistics
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from comprexit_rag.backbone import Backbone
from comprexit_rag.evaluation.metrics import f1_score
from comprexit_rag.evaluation.paired import load_predictions
from comprexit_rag.training.config import TrainConfig
from comprexit_rag.training.data import DEFAULT_QA_FAMILIES, QATrainingSet
from comprexit_rag.training.trainer import draw_batch, make_sampler

logger = logging.getLogger("seen_questions")


@functools.cache
def drawable_questions(families: tuple[str, ...], backbone: Backbone) -> frozenset[str]:
    """The questions a stage with these QA families can draw: its QA set leaves out answers over 64 tokens,
    which are not a random subset (long answers), so questions never drawn because they are not in it are no
    control. Built once for the stages that share their families."""
    qa = QATrainingSet.build(backbone.tokenizer, families=families)
    return frozenset(item.question for items in qa.families.values() for item in items)


def replay_stage(config: TrainConfig, steps: int, backbone: Backbone) -> tuple[Counter, int]:
    """How often each question was drawn in the first ``steps`` steps of a stage, and the target tokens of
    all its batches (QA and text steps), as the trainer counts them in ``state["target_tokens"]``."""
    sample, _ = make_sampler(config, backbone)
    drawn: Counter = Counter()
    target_tokens = 0
    for step in tqdm(range(steps), desc=f"replaying seed {config.seed}"):
        for micro in range(config.grad_accum):
            _, batch, _ = draw_batch(config, step, micro, sample)
            target_tokens += sum(len(example.target_ids) for example in batch)
            drawn.update(example.question for example in batch if example.question)
    return drawn, target_tokens


def question_groups(question: str, per_stage: list[Counter], drawable: set[str]) -> list[str]:
    """The groups a question counts in: how often the stages drew it, and which of them did."""
    if question not in drawable:
        return ["not in the QA set"]
    counts = [drawn[question] for drawn in per_stage]
    total = sum(counts)
    groups = ["never drawn" if total == 0 else "drawn once" if total == 1 else "drawn 2+ times"]
    if total:
        groups.append("drawn")
    if len(per_stage) > 1 and total:
        groups.append("drawn in stage " + "+".join(str(k + 1) for k, count in enumerate(counts) if count))
    return groups


def f1_by_question(path: Path) -> dict[str, float]:
    """Each question's F1 (x100, best over its gold answers) in a ``comprexit-rag eval --predictions`` file."""
    checked = load_predictions(path)  # checks the file; its records are keyed by id, the draws by question
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    scores = {}
    for row in rows:
        answers, prediction = checked[str(row["id"])]
        scores[row["question"]] = max(f1_score(prediction, answer) for answer in answers) * 100
    return scores


def table_by_group(values: dict[str, float], per_stage: list[Counter], drawable: set[str]) -> dict:
    """Mean and standard error of ``values`` (per question) in each group, and drawn minus never drawn."""
    groups: dict[str, list[float]] = {}
    for question, value in values.items():
        for group in question_groups(question, per_stage, drawable):
            groups.setdefault(group, []).append(value)
    table = {}
    for name, group in sorted(groups.items()):
        mean = statistics.fmean(group)
        error = statistics.stdev(group) / math.sqrt(len(group)) if len(group) > 1 else math.nan
        table[name] = {"n": len(group), "mean": round(mean, 1), "standard_error": round(error, 1)}
    if "drawn" in table and "never drawn" in table:
        seen, unseen = table["drawn"], table["never drawn"]
        table["drawn minus never drawn"] = {
            "mean": round(seen["mean"] - unseen["mean"], 1),
            "standard_error": round(math.hypot(seen["standard_error"], unseen["standard_error"]), 1),
        }
    return table


def parse_stage(text: str) -> tuple[Path, int, int | None]:
    config, steps, *expected = text.split(":")
    return Path(config), int(steps), int(expected[0]) if expected else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", action="append", required=True, help="CONFIG:STEPS[:TARGET_TOKENS], in order")
    parser.add_argument("--predictions", nargs="+", required=True, help="NAME=FILE from comprexit-rag eval")
    parser.add_argument(
        "--difference", nargs=2, action="append", default=[], metavar=("B", "A"), help="B's F1 minus A's, by question"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device="cpu")
    per_stage: list[Counter] = []
    drawable: set[str] = set()
    stages = []
    for text in args.stage:
        path, steps, expected = parse_stage(text)
        config = TrainConfig(**json.loads(path.read_text()) | {"output_dir": "unused"})
        drawable |= drawable_questions(tuple(config.qa_families or DEFAULT_QA_FAMILIES), backbone)
        drawn, target_tokens = replay_stage(config, steps, backbone)
        if expected is not None and target_tokens != expected:
            # Other batches than the run's would differ by hundreds of tokens or more (a QA answer is a few
            # tokens, a text step's target 129): a small difference is a few answers tokenised differently.
            logger.warning("%s: replayed %d target tokens, the run counted %d", path, target_tokens, expected)
        per_stage.append(drawn)
        stages.append(
            {
                "config": str(path),
                "steps": steps,
                "seed": config.seed,
                "replayed_target_tokens": target_tokens,
                "run_target_tokens": expected,
            }
        )

    scores = {name: f1_by_question(Path(file)) for name, _, file in (p.partition("=") for p in args.predictions)}
    f1 = {name: table_by_group(values, per_stage, drawable) for name, values in scores.items()}
    differences = {}
    for b, a in args.difference:
        shared = scores[a].keys() & scores[b].keys()
        differences[f"{b} minus {a}"] = table_by_group(
            {q: scores[b][q] - scores[a][q] for q in shared}, per_stage, drawable
        )
    for name, table in {**f1, **differences}.items():
        logger.info("%s: %s", name, table)
    command = [f"--stage {stage}" for stage in args.stage] + ["--predictions", *args.predictions]
    command += [f"--difference {b} {a}" for b, a in args.difference]
    record = {
        "command": "python research/seen_questions.py " + " ".join([*command, "--out", str(args.out)]),
        "stages": stages,
        "f1_by_draws": f1,
        "paired_differences_by_draws": differences,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
