"""CPU indexing speed: passages/s of ComprExITCompressor.compress in float32, and where the time goes.

Passages are real SQuAD contexts (``load_split("squad", "dev")``): the distinct contexts whose length
with the backbone's tokenizer lies in ``--min-tokens``..``--max-tokens`` (about 150 tokens), in
SHA-1 order of their text, first ``--passages`` of them. The default backbone (SmolLM2-135M) runs in
float32 on the CPU; the head is ``--head`` or a freshly initialised one (speed does not depend on
its weights).

For each batch size, one warm-up call and ``--repeats`` timed calls of ``compress`` (median). During
the timed calls, wall-clock section timers (module hooks and wrappers installed by this script; the
library is not modified) split the time into:

- ``tokenisation``: ``Backbone.tokenize``;
- ``backbone``: the frozen forward with all hidden states;
- ``depth``: depth-wise transmission (``head.depth``);
- ``width``: width-wise transmission without Sinkhorn (``head.width`` minus ``log_sinkhorn``);
- ``sinkhorn``: ``log_sinkhorn``;
- ``projector``: ``head.projector``;
- ``windows``: ``split_windows`` + ``join_windows``;
- ``other``: the rest (segmenting, batching, per-row slot extraction, SoftContext).

The CPU is synchronous, so the wall-clock sections are exact; their times add up to the total.
Then one more call runs under ``torch.profiler`` (the same sections become ``record_function``
ranges) and the operators with the most self CPU time are listed.

On a shared machine the timings are noisy: the load average at start and end is recorded.

Run (a few minutes on 2 cores)::

    HF_HUB_OFFLINE=1 python benchmarks/cpu_indexing.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from benchmark_environment import load_average, machine_environment
from torch import nn

import comprexit_rag.methods.comprexit.head as head_module
import comprexit_rag.methods.comprexit.width as width_module
from comprexit_rag.backbone import Backbone
from comprexit_rag.checkpoint import check_fingerprint
from comprexit_rag.data import load_split
from comprexit_rag.data.splits import sha1_hex
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead

DEFAULT_OUT = Path(__file__).parent / "results" / "cpu_indexing.json"
SECTIONS = ("tokenisation", "backbone", "depth", "width", "sinkhorn", "projector", "windows", "other")


class SectionTimer:
    """Inclusive wall-clock time per named section, also emitted as profiler ``record_function`` ranges."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._open: list[tuple[str, float, Any]] = []

    def enter(self, name: str) -> None:
        scope = torch.profiler.record_function(f"section::{name}")
        scope.__enter__()
        self._open.append((name, time.perf_counter(), scope))

    def exit(self, name: str) -> None:
        open_name, start, scope = self._open.pop()
        assert open_name == name, f"section {name} closed while {open_name} is open"
        scope.__exit__(None, None, None)
        self.totals[name] += time.perf_counter() - start

    def reset(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals

    def wrap(self, function: Callable[..., Any], name: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.exit(name)

        return timed


@contextlib.contextmanager
def instrumented(compressor: ComprExITCompressor, timer: SectionTimer) -> Iterator[None]:
    """Install the section timers for the duration of the block (hooks and attribute overrides only)."""
    head, backbone = compressor.head, compressor.backbone
    modules: dict[str, nn.Module] = {
        "backbone": backbone.model.base_model,
        "depth": head.depth,
        "width": head.width,
        "projector": head.projector,
    }
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: timer.enter(name)))
        handles.append(module.register_forward_hook(lambda _m, _a, _o, name=name: timer.exit(name)))
    patched = [
        (width_module, "sinkhorn", "sinkhorn"),
        (head_module, "split_windows", "windows"),
        (head_module, "join_windows", "windows"),
    ]
    originals = [(module, attribute, getattr(module, attribute)) for module, attribute, _ in patched]
    for module, attribute, name in patched:
        setattr(module, attribute, timer.wrap(getattr(module, attribute), name))
    backbone.tokenize = timer.wrap(backbone.tokenize, "tokenisation")  # instance attribute shadows the method
    try:
        yield
    finally:
        del backbone.tokenize
        for module, attribute, original in originals:
            setattr(module, attribute, original)
        for handle in handles:
            handle.remove()


def exclusive_sections(totals: dict[str, float], total: float) -> dict[str, float]:
    """Turn inclusive section times into exclusive ones (width without Sinkhorn) plus ``other``."""
    sections = {name: totals.get(name, 0.0) for name in SECTIONS if name != "other"}
    sections["width"] -= sections["sinkhorn"]
    sections["other"] = total - sum(sections.values())
    return sections


def select_passages(backbone: Backbone, count: int, min_tokens: int, max_tokens: int) -> list[str]:
    """Distinct SQuAD dev contexts of min..max tokens, in SHA-1 order of their text."""
    contexts = list(dict.fromkeys(p.formatted() for example in load_split("squad", "dev") for p in example.passages))
    contexts.sort(key=sha1_hex)
    lengths = [len(ids) for ids in backbone.tokenize(contexts)]
    chosen = [text for text, length in zip(contexts, lengths, strict=True) if min_tokens <= length <= max_tokens]
    if len(chosen) < count:
        raise SystemExit(f"Only {len(chosen)} SQuAD dev contexts have {min_tokens}-{max_tokens} tokens.")
    return chosen[:count]


def profile_once(compressor: ComprExITCompressor, passages: list[str], batch_size: int, top: int) -> dict[str, Any]:
    """One profiled call: the sections' CPU totals and the top operators by self CPU time."""
    timer = SectionTimer()
    with (
        instrumented(compressor, timer),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler,
    ):
        compressor.compress(passages, batch_size=batch_size, show_progress=False)
    averages = profiler.key_averages()
    sections = {
        event.key.removeprefix("section::"): event.cpu_time_total / 1e6
        for event in averages
        if event.key.startswith("section::")
    }
    operators = sorted(
        (event for event in averages if not event.key.startswith("section::")),
        key=lambda event: event.self_cpu_time_total,
        reverse=True,
    )
    total_self = sum(event.self_cpu_time_total for event in averages) / 1e6
    return {
        "batch_size": batch_size,
        "section_cpu_total_s": sections,
        "total_self_cpu_s": total_self,
        "top_operators": [
            {
                "name": event.key,
                "calls": event.count,
                "self_cpu_s": event.self_cpu_time_total / 1e6,
                "self_cpu_fraction": event.self_cpu_time_total / 1e6 / total_self if total_self else None,
            }
            for event in operators[:top]
        ],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="local path or model name (default: the embedded SmolLM2)")
    parser.add_argument("--head", default=None, help="trained head directory (default: freshly initialised)")
    parser.add_argument("--passages", type=int, default=16)
    parser.add_argument("--min-tokens", type=int, default=120)
    parser.add_argument("--max-tokens", type=int, default=180)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16], help="compress batch sizes")
    parser.add_argument("--ratio", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--top", type=int, default=15, help="operators listed from the profile")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler call")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def _row(name: str, seconds: float, total: float) -> str:
    return f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% |"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    environment = machine_environment(torch.device("cpu"))
    load_start = environment["load_average_at_start"]
    backbone = Backbone.from_pretrained(args.backbone, device="cpu", dtype=torch.float32)
    if args.head:
        head = ComprExITHead.from_pretrained(args.head, device="cpu")
        check_fingerprint(head.fingerprint, backbone.fingerprint, f"The head at {args.head}")
    else:
        torch.manual_seed(0)
        head = ComprExITHead.for_backbone(backbone)
    compressor = ComprExITCompressor(backbone, head)
    ratio = args.ratio or head.config.ratio
    passages = select_passages(backbone, args.passages, args.min_tokens, args.max_tokens)
    token_counts = [len(ids) for ids in backbone.tokenize(passages)]
    num_tokens = sum(token_counts)
    print(
        f"{len(passages)} passages, {num_tokens} tokens (mean {num_tokens / len(passages):.1f}); "
        f"torch threads {torch.get_num_threads()}; load average {load_start}",
        file=sys.stderr,
    )

    runs = []
    timer = SectionTimer()
    for batch_size in args.batch_sizes:
        compressor.compress(passages, ratio=ratio, batch_size=batch_size, show_progress=False)  # warm-up
        times, breakdowns = [], []
        with instrumented(compressor, timer):
            for _ in range(args.repeats):
                timer.reset()
                start = time.perf_counter()
                soft = compressor.compress(passages, ratio=ratio, batch_size=batch_size, show_progress=False)
                elapsed = time.perf_counter() - start
                times.append(elapsed)
                breakdowns.append(exclusive_sections(timer.reset(), elapsed))
        median = statistics.median(times)
        sections = {name: statistics.median(b[name] for b in breakdowns) for name in SECTIONS}
        runs.append(
            {
                "batch_size": batch_size,
                "times_s": times,
                "median_s": median,
                "passages_per_s": len(passages) / median,
                "tokens_per_s": num_tokens / median,
                "slots": int(sum(soft.slot_counts)),
                "sections_median_s": sections,
                "sections_fraction": {name: value / sum(sections.values()) for name, value in sections.items()},
                "sections_per_repeat_s": breakdowns,
            }
        )
        print(f"batch {batch_size}: {len(passages) / median:.2f} passages/s (times {times})", file=sys.stderr)

    profile = None
    if not args.no_profile:
        profile = profile_once(compressor, passages, args.batch_sizes[0], args.top)

    load_end = environment["load_average_at_end"] = load_average()
    report = {
        "description": "ComprExITCompressor.compress on CPU in float32: passages/s and a time breakdown",
        "note": (
            "Measured on a shared machine while other jobs ran; timings are noisy (see load averages). "
            "Section times are wall clock from module hooks and wrappers; 'width' excludes Sinkhorn; "
            "'other' is segmenting, batching, per-row slot extraction and SoftContext assembly."
        ),
        "environment": environment,
        "backbone": {
            "name": backbone.name,
            "parameters": backbone.num_parameters(),
            "dtype": "float32",
            "attn_implementation": getattr(backbone.model.config, "_attn_implementation", None),
        },
        "head": {
            "source": args.head or "freshly initialised (ComprExITHead.for_backbone)",
            "parameters": head.num_parameters(),
            "config": head.config.to_dict(),
        },
        "passages": {
            "source": 'comprexit_rag.data.load_split("squad", "dev") distinct contexts, SHA-1 order',
            "count": len(passages),
            "tokens": num_tokens,
            "tokens_min": min(token_counts),
            "tokens_max": max(token_counts),
            "tokens_mean": num_tokens / len(passages),
        },
        "ratio": ratio,
        "repeats": args.repeats,
        "runs": runs,
        "profile": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    lines = ["| batch size | passages/s | tokens/s | median s |", "| ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['batch_size']} | {r['passages_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['median_s']:.2f} |"
        for r in runs
    ]
    for run in runs:
        total = sum(run["sections_median_s"].values())
        lines += ["", f"Batch size {run['batch_size']}:", "", "| section | median s | share |", "| --- | ---: | ---: |"]
        lines += [_row(name, run["sections_median_s"][name], total) for name in SECTIONS]
    if profile:
        lines += ["", f"Top operators by self CPU time (batch size {profile['batch_size']}):", ""]
        lines += ["| operator | calls | self CPU s | share |", "| --- | ---: | ---: | ---: |"]
        lines += [
            f"| {op['name']} | {op['calls']} | {op['self_cpu_s']:.3f} | {100 * op['self_cpu_fraction']:.1f}% |"
            for op in profile["top_operators"]
        ]
    lines += ["", f"Load average at start {load_start}, at end {load_end} (shared machine: noisy timings)."]
    print("\n".join(lines))
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
