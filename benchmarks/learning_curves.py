"""The learning curves of the long run behind the shipped head: where each stage stopped moving.

Reads a run manifest (``benchmarks/results/reader_adapter/long_run.json``: the pretraining pieces' logs
and held-out scores at their checkpoints, the QA stages of several lengths, later passes over the QA data
from one of them, the runs trained on the same batches as that stage (the baselines, and the stage without
distillation), and the run that continued the
QA stage at 4, 8 and 16x with its held-out answers at each ratio, then that run's head continued by stages:
reconstruction only, then QA) and writes a Markdown report and a figure from the committed files alone (no model,
no GPU)::

    python benchmarks/learning_curves.py --out benchmarks/results/reader_adapter/learning_curves.md \\
        --plot benchmarks/results/reader_adapter/learning_curves.png

Training losses are single logged steps (every 10th), averaged over blocks of steps; a QA stage's steps mix
objectives (QA, and 30% text steps: reconstruction, reading tasks, continuation), so its QA curve keeps
the QA steps only. The held-out scores are the quality files' (``benchmarks/slot_quality.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from comprexit_rag.evaluation.metrics import f1_score
from comprexit_rag.evaluation.paired import load_predictions

QA_OBJECTIVE = "QAPrompt"
QA_STAGE_BATCH = 32  # examples per step of the first-pass QA stages (sft-4x-mixed.json)


@dataclass
class Block:
    """Mean training loss of the logged steps in ``[first, last]`` (of one objective, or all)."""

    first: int
    last: int
    loss: float
    logged: int


def read_curve(paths: list[Path]) -> list[dict]:
    """The logged steps of a run's pieces, in order; a step logged by two pieces counts once."""
    records: dict[int, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records.setdefault(record["step"], record)
    return [records[step] for step in sorted(records)]


def block_means(records: list[dict], size: int, objective: str | None = None) -> list[Block]:
    """Mean loss per block of ``size`` steps (steps 1-size, size+1-2*size, ...) of ``objective``'s steps."""
    blocks: dict[int, list[float]] = {}
    end = max((record["step"] for record in records), default=0)
    for record in records:
        if objective is None or record["objective"] == objective:
            blocks.setdefault((record["step"] - 1) // size, []).append(record["loss"])
    return [
        Block(index * size + 1, min((index + 1) * size, end), sum(losses) / len(losses), len(losses))
        for index, losses in sorted(blocks.items())
    ]


def held_out(path: Path) -> dict[str, float | None]:
    """F1 (x100) and reconstruction nats of a ``slot_quality.py`` result; None where it did not measure a row."""
    report = json.loads(path.read_text())

    def f1(family: str, row: str) -> float | None:
        value = report.get(family, {}).get(row)
        value = value.get("f1") if isinstance(value, dict) else value
        return None if value is None else round(100 * value, 1)

    scores: dict[str, float | None] = {}
    for family, name in (("qa_nq", "NQ"), ("qa_hotpotqa", "HotpotQA")):
        for row in ("own", "other", "closed_book", "raw_text", "content_gap_f1"):
            scores[f"{name} {row}"] = f1(family, row)
        own, gap = scores[f"{name} own"], scores[f"{name} content_gap_f1"]
        if scores[f"{name} other"] is None and own is not None and gap is not None:
            scores[f"{name} other"] = round(own - gap, 1)  # a recovered result kept only own and the gap
    reconstruction = report.get("reconstruction_nq", {})
    for row in ("own", "none", "raw_text"):
        scores[f"reconstruction {row}"] = reconstruction.get(f"{row}_nats")
    return scores


def predictions_f1(path: Path) -> float:
    """Mean F1 (x100) of a ``comprexit-rag eval --predictions`` file, each answer against its best gold."""
    records = load_predictions(path).values()
    return round(100 * sum(f1_score(prediction, answers) for answers, prediction in records) / len(records), 1)


def per_doubling(steps: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares fit value = a + b * log2(steps): returns (a, b), b the gain per doubling."""
    xs = [math.log2(step) for step in steps]
    mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def score_cells(scores: dict) -> list[str]:
    """The held-out cells of a row: NQ own, another passage, closed-book, raw text, gap; HotpotQA own, gap;
    reconstruction (no context), where measured."""
    own, none = scores["reconstruction own"], scores["reconstruction none"]
    recon = "" if own is None else f"{cell(own, 3)} ({cell(none, 2)})"
    nq = [cell(scores[f"NQ {row}"]) for row in ("own", "other", "closed_book", "raw_text", "content_gap_f1")]
    return [*nq, cell(scores["HotpotQA own"]), cell(scores["HotpotQA content_gap_f1"]), recon]


def row(*cells: object) -> str:
    return "| " + " | ".join(str(value) for value in cells) + " |"


def qa_row(name: str, steps: int, start: int | str, scores: dict) -> str:
    """One row of the QA stage length table."""
    return row(name, steps, start, *score_cells(scores))


def pretraining_section(pretraining: dict, root: Path) -> tuple[list[str], list[dict], dict[int, dict]]:
    """The pretraining table, its logged steps and the held-out scores at its checkpoints."""
    curve = read_curve([root / path for path in pretraining["curves"]])
    checkpoints = {point["step"]: held_out(root / point["quality"]) for point in pretraining["checkpoints"]}
    lines = [
        f"## Pretraining (`{pretraining['config']}`)\n",
        "Training loss (reconstruction, nats/token) by block of 250 steps; held-out NQ reconstruction "
        f"(64 windows, own slots) at the checkpoints that were scored. {pretraining['note']}\n",
        "| steps | training loss | logged steps | held-out reconstruction at a checkpoint in the block |",
        "|---|---|---|---|",
    ]
    for block in block_means(curve, 250):
        scored = [
            f"{checkpoints[s]['reconstruction own']:.3f} (step {s})"
            for s in checkpoints
            if block.first <= s <= block.last
        ]
        lines.append(f"| {block.first}-{block.last} | {block.loss:.4f} | {block.logged} | {', '.join(scored)} |")
    return lines, curve, checkpoints


def qa_length_section(
    stages: list[dict], same_batch: list[dict], same_batch_curves: list[list[dict]], root: Path
) -> tuple[list[str], list[tuple[int, dict]], tuple[float, float]]:
    """The table of QA stage lengths against held-out scores, a row per same-batch run and the per-doubling fit;
    returns each stage's (steps, scores) and the NQ fit (intercept, gain per doubling) too."""
    described = "; ".join(f"`{run['name']}`: {run['description']}" for run in same_batch)
    lines = [
        "\n## QA stage length\n",
        "Each stage starts from a pretraining checkpoint and runs the mixed QA stage "
        "(`experiments/reader_adapter/sft-4x-mixed.json`, batch 32; session 9's before answers over 64 tokens "
        "were left out) for its number of steps, its cosine fitted to them; session 9 kept only the own and gap "
        "rows. F1 on the held-out dev splits (NQ 400 gold passage, HotpotQA 200 distractor); "
        f"{described}.\n",
        "| stage | QA steps | from pretraining step | NQ own | another passage | closed-book | raw text | NQ gap "
        "| HotpotQA own | HotpotQA gap | reconstruction (none) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for stage in stages:
        steps = read_curve([root / stage["curve"]])[-1]["step"]
        scores = held_out(root / stage["quality"])
        points.append((steps, scores))
        lines.append(qa_row(f"session {stage['session']}", steps, stage["from_pretraining_step"], scores))
    for run, curve in zip(same_batch, same_batch_curves, strict=True):
        scores = held_out(root / run["quality"])
        lines.append(qa_row(f"`{run['name']}` ({run['reads']})", curve[-1]["step"], "", scores))
    steps = [step for step, _ in points]
    intercept, gain = per_doubling(steps, [scores["NQ own"] for _, scores in points])
    _, hotpot_gain = per_doubling(steps, [scores["HotpotQA own"] for _, scores in points])
    longest = max(steps)
    lines += [
        "",
        f"A least-squares line in log2(QA steps) through the {len(points)} stages: NQ F1 {intercept:.1f} + "
        f"{gain:.1f} per doubling of the QA steps (HotpotQA {hotpot_gain:+.1f} per doubling). Read along it "
        f"(an extrapolation, not a measurement; the stages also start from different pretraining "
        f"checkpoints): {2 * longest} steps would give NQ F1 "
        f"{intercept + gain * math.log2(2 * longest):.1f}, {4 * longest} steps "
        f"{intercept + gain * math.log2(4 * longest):.1f}.",
    ]
    return lines, points, (intercept, gain)


def later_pass_section(
    later: dict, first_steps: int, fit: tuple[float, float], root: Path
) -> tuple[list[str], list[tuple[float, float, float, str]]]:
    """Passes over the QA data after one stage's first, against the per-doubling fit read at the same number of
    examples; returns each run's (batch-32 steps, NQ F1, HotpotQA F1, name) too. A run that continues another
    (``"after"``: that run's name) counts that run's examples before its own."""
    examples = first_steps * QA_STAGE_BATCH
    lines = [
        f"\n## Later passes over the QA data (from the session-{later['from_session']} stage)\n",
        f"{later['description']} Examples count every pass ({examples:,} in the first; 30% of them text steps); "
        f'"fit" reads the line above at that many batch-{QA_STAGE_BATCH} steps.\n',
        "| run | pass | steps of this pass | examples in all | NQ own | fit | another passage | closed-book "
        "| raw text | NQ gap | HotpotQA own | HotpotQA gap | reconstruction (none) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    intercept, gain = fit
    points = []
    seen_after: dict[str, tuple[int, int]] = {}  # run name -> (examples seen at its end, its pass)
    for run in later["runs"]:
        steps = read_curve([root / run["curve"]])[-1]["step"]
        before, previous_pass = seen_after[run["after"]] if "after" in run else (examples, 1)
        seen = before + steps * later["batch_size"]
        seen_after[run["name"]] = (seen, previous_pass + 1)
        scores = held_out(root / run["quality"])
        predicted = intercept + gain * math.log2(seen / QA_STAGE_BATCH)
        points.append((seen / QA_STAGE_BATCH, scores["NQ own"], scores["HotpotQA own"], run["name"]))
        name = run["name"] + (" (shipped)" if run.get("shipped") else "")
        cells = score_cells(scores)
        cells.insert(1, f"{predicted:.1f}")  # the fit next to the NQ F1 it predicts
        lines.append(row(name, previous_pass + 1, steps, f"{seen:,}", *cells))
    return lines, points


def qa_loss_section(
    slots_curve: list[dict], same_batch: list[dict], same_batch_curves: list[list[dict]], session: int
) -> list[str]:
    """Mean loss of the QA steps per 100 steps, a slots stage against each run on the same batches."""
    slot_blocks = block_means(slots_curve, 100, QA_OBJECTIVE)
    run_blocks = [
        {block.first: block for block in block_means(curve, 100, QA_OBJECTIVE)} for curve in same_batch_curves
    ]
    names = [f"`{run['name']}` ({run['loss']})" for run in same_batch]
    lines = [
        f"\n## QA training loss, the session-{session} stage against the other runs on the same batches\n",
        "Mean loss of the logged QA steps per block of 100 steps (same seed and config, so the same batches "
        "at every step). The slots stage's loss is the answer cross-entropy plus 0.5 x the KL to its "
        "teacher; each other run's is named in its column.\n",
        row("steps", f"slots (session-{session} stage, CE + 0.5 KL)", *names, "logged QA steps"),
        row(*["---"] * (len(same_batch) + 3)),
    ]
    for block in slot_blocks:
        losses = [cell(blocks[block.first].loss if block.first in blocks else None, 3) for blocks in run_blocks]
        lines.append(row(f"{block.first}-{block.last}", f"{block.loss:.3f}", *losses, block.logged))
    return lines


def ratio_checkpoint_rows(
    checkpoints: list[dict], ratios: list[int], root: Path
) -> tuple[list[str], dict[int, list[tuple[int | str, float]]]]:
    """One row per checkpoint: its held-out NQ F1 and reconstruction at each ratio; and each ratio's
    (step, NQ F1)."""
    f1_by_ratio: dict[int, list[tuple[int | str, float]]] = {ratio: [] for ratio in ratios}
    lines = [
        row(
            "step", "head", *[f"NQ F1 {ratio}x" for ratio in ratios], *[f"reconstruction {ratio}x" for ratio in ratios]
        ),
        row(*["---"] * (2 + 2 * len(ratios))),
    ]
    for point in checkpoints:
        f1 = [predictions_f1(root / point["nq"][str(ratio)]) for ratio in ratios]
        recon = [held_out(root / point["reconstruction"][str(ratio)])["reconstruction own"] for ratio in ratios]
        for ratio, value in zip(ratios, f1, strict=True):
            f1_by_ratio[ratio].append((point["step"], value))
        lines.append(row(point["step"], point["name"], *map(cell, f1), *(cell(value, 2) for value in recon)))
    return lines, f1_by_ratio


def ratio_loss_rows(curve: list[dict], ratios: list[int], objective: str, size: int) -> list[str]:
    """Mean loss of ``objective``'s logged steps per block of ``size`` steps, by the ratio the step drew."""
    by_ratio = [
        {block.first: block for block in block_means([r for r in curve if r["ratio"] == ratio], size, objective)}
        for ratio in ratios
    ]
    lines = [row("steps", *[f"loss {ratio}x (logged)" for ratio in ratios]), row(*["---"] * (1 + len(ratios)))]
    for first in sorted(set().union(*by_ratio)):
        blocks = [blocks.get(first) for blocks in by_ratio]
        last = min(first + size - 1, curve[-1]["step"])
        cells = ["" if block is None else f"{block.loss:.3f} ({block.logged})" for block in blocks]
        lines.append(row(f"{first}-{last}", *cells))
    return lines


def multi_ratio_section(multi: dict, root: Path) -> tuple[list[str], dict[int, list[tuple[int | str, float]]]]:
    """Held-out NQ F1 and reconstruction at each ratio, checkpoint by checkpoint, and the QA loss by ratio per
    block of 250 steps; returns each ratio's (step, NQ F1) too."""
    ratios = multi["ratios"]
    checkpoint_rows, f1_by_ratio = ratio_checkpoint_rows(multi["checkpoints"], ratios, root)
    lines = [
        f"\n## Training at {', '.join(map(str, ratios))}x (`{multi['config']}`)\n",
        f"{multi['description']}\n",
        *checkpoint_rows,
        "",
        "Mean loss of the logged QA steps (CE + 0.5 KL) per block of 250 steps, by the ratio the step drew:\n",
        *ratio_loss_rows(read_curve([root / path for path in multi["curves"]]), ratios, QA_OBJECTIVE, 250),
    ]
    return lines, f1_by_ratio


def multi_ratio_pretraining_section(experiment: dict, root: Path) -> list[str]:
    """The multi-ratio head continued by stages (reconstruction only, then QA): held-out scores after each
    stage, and each stage's training loss by ratio."""
    ratios = experiment["ratios"]
    lines = [
        f"\n## Reconstruction pretraining at {', '.join(map(str, ratios))}x, then QA (`{experiment['experiment']}`)\n",
        f"{experiment['description']}\n",
        *ratio_checkpoint_rows(experiment["checkpoints"], ratios, root)[0],
    ]
    for stage in experiment["stages"]:
        lines += [
            "",
            f"{stage['name']} (`{stage['config']}`): mean loss of the logged {stage['objective']} steps per block of "
            f"{stage['block']} steps, by the ratio the step drew:\n",
            *ratio_loss_rows(
                read_curve([root / path for path in stage["curves"]]), ratios, stage["objective"], stage["block"]
            ),
        ]
    return lines


def qa_losses(curve: list[dict]) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in curve if record["objective"] == QA_OBJECTIVE]


def report(manifest_path: Path) -> tuple[str, dict]:
    """The Markdown report of a run manifest, and the series the figure draws."""
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    stages = sorted(manifest["qa_stages"], key=lambda stage: stage["session"])
    same_batch = manifest["same_batch_runs"]
    reference = same_batch[0]  # the full-text baseline: the figure's reference line
    paired = next(stage for stage in stages if stage["session"] == reference["same_batches_as_session"])
    slots_curve = read_curve([root / paired["curve"]])
    same_batch_curves = [read_curve([root / run["curve"]]) for run in same_batch]

    pretraining, curve, checkpoints = pretraining_section(manifest["pretraining"], root)
    qa_length, points, fit = qa_length_section(stages, same_batch, same_batch_curves, root)
    later = manifest["later_passes"]
    first_steps = next(
        steps for (steps, _), stage in zip(points, stages, strict=True) if stage["session"] == later["from_session"]
    )
    later_lines, later_points = later_pass_section(later, first_steps, fit, root)
    multi_ratio_lines, multi_ratio_f1 = multi_ratio_section(manifest["multi_ratio"], root)
    lines = [
        f"# Learning curves of the long run\n\n{manifest['description']}\n",
        *pretraining,
        *qa_length,
        *later_lines,
        *qa_loss_section(slots_curve, same_batch, same_batch_curves, paired["session"]),
        *multi_ratio_lines,
        *multi_ratio_pretraining_section(manifest["multi_ratio_pretraining"], root),
    ]
    series = {
        "pretraining": [(record["step"], record["loss"]) for record in curve],
        "checkpoints": [(step, scores["reconstruction own"]) for step, scores in sorted(checkpoints.items())],
        "slots_qa": qa_losses(slots_curve),
        "same_batch_qa": [
            (f"{run['name']} ({run['loss']})", qa_losses(curve))
            for run, curve in zip(same_batch, same_batch_curves, strict=True)
        ],
        "stage_f1": [(step, scores["NQ own"], scores["HotpotQA own"]) for step, scores in points],
        "later_pass_f1": later_points,
        "reference_nq_f1": held_out(root / reference["quality"])["NQ own"],
        "references": manifest["references"],
        "reference_name": reference["name"],
        "paired_session": paired["session"],
        "multi_ratio_f1": multi_ratio_f1,
    }
    return "\n".join(lines) + "\n", series


def plot(series: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ((pretraining, qa), (length, ratios)) = plt.subplots(2, 2, figsize=(16, 9))
    pretraining.plot(*zip(*series["pretraining"], strict=True), lw=0.8, label="training (reconstruction)")
    pretraining.plot(*zip(*series["checkpoints"], strict=True), "o-", label="held-out NQ windows")
    pretraining.set(
        xlabel="pretraining step (batch 256)", ylabel="nats / token", yscale="log", title="Pretraining at 4x"
    )
    pretraining.legend()
    qa.plot(*zip(*series["slots_qa"], strict=True), lw=0.8, label="slots (CE + 0.5 KL)")
    for name, losses in series["same_batch_qa"]:
        qa.plot(*zip(*losses, strict=True), lw=0.8, label=name)
    title = f"Session-{series['paired_session']} QA stage, same batches"
    qa.set(xlabel="QA step (batch 32)", ylabel="loss of QA steps", title=title)
    qa.legend()
    steps, nq, hotpotqa = zip(*series["stage_f1"], strict=True)
    length.plot(steps, nq, "o-", label="NQ, slots")
    length.plot(steps, hotpotqa, "s-", label="HotpotQA, slots")
    # One marker per later pass; itertools.cycle keeps a long list of passes on the plot rather than dropping some.
    for marker, (steps, nq, hotpotqa, name) in zip(itertools.cycle("*Pxdv^s"), series["later_pass_f1"], strict=False):
        length.plot([steps], [nq], marker, c="C0", ms=9, label=f"NQ, later pass ({name})")
        length.plot([steps], [hotpotqa], marker, c="C1", ms=9)
    length.axhline(series["reference_nq_f1"], ls="--", c="C0", lw=0.8, label=f"NQ, {series['reference_name']}")
    length.axhline(series["references"]["full-tuned NQ F1"], ls=":", c="C0", lw=0.8, label="NQ, full-tuned")
    length.set(
        xlabel="QA steps of 32 examples, or their equivalent (log scale)",
        ylabel="F1",
        xscale="log",
        title="QA stage length, held-out F1",
    )
    length.set_xticks([200, 500, 1000, 2000, 3000], ["200", "500", "1,000", "2,000", "3,000"])
    length.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on this range
    length.set_ylim(top=length.get_ylim()[1] + 14)  # a band above the full-lora line for the legend
    length.legend(fontsize=7, loc="upper left", ncols=2)
    for ratio, points in series["multi_ratio_f1"].items():
        ratios.plot(*zip(*points, strict=True), "o-", label=f"NQ, slots at {ratio}x")
    full_tuned = series["references"]["full-tuned NQ F1"]
    ratios.axhline(full_tuned, ls=":", c="k", lw=0.8, label="NQ, full-tuned")
    ratios.axhline(0.85 * full_tuned, ls="--", c="C2", lw=0.8, label="16x goal (0.85x full-tuned)")
    ratios.set(xlabel="step of the run at 4, 8 and 16x (batch 128)", ylabel="F1", title="Training at 4, 8 and 16x")
    ratios.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.88))  # under 4x, left of the other lines
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("benchmarks/results/reader_adapter/long_run.json"))
    parser.add_argument("--out", type=Path, required=True, help="Markdown report")
    parser.add_argument("--plot", type=Path, help="PNG figure")
    args = parser.parse_args()
    text, series = report(args.manifest)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.plot:
        plot(series, args.plot)
    print(text)


if __name__ == "__main__":
    main()
