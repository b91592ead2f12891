"""Synchronous vs asynchronous calls on a CPU, idle and with a competing process, with and without
the library's thread policy (:mod:`comprexit_rag.threads`).

A "sync" call runs in the main thread, as ``pipeline.ask`` / ``reader.invoke`` do; an "async" call
runs in a worker thread, as ``ainvoke`` / ``aquery`` do (``asyncio.to_thread``). The competing
process multiplies 512x512 matrices with torch's default threads, as another model would. Each
number is the median of ``--repeats`` calls after a warm-up; sync and async calls alternate, so a
change in the machine's load hits both alike.

HF_HUB_OFFLINE=1 python benchmarks/thread_contention.py --out benchmarks/results/thread_contention.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 as the centrepiece "
    "of the 1889 World's Fair. "
) * 4
QUESTION = "Who designed and built the Eiffel Tower?"
ENV = "COMPREXIT_NUM_THREADS"
COMPETITOR = """
import torch
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""
# How each child process starts: which module it imports first, and its environment.
POLICIES = {
    # The library's policy as users get it: comprexit_rag imported before torch (short OpenMP spin-wait).
    "library": {"torch_first": False, "env": {}},
    # torch imported first: the fallback, fewer intra-op threads inside the library's forwards.
    "torch_first": {"torch_first": True, "env": {}},
    # Before this policy: torch's defaults (active waiting, one thread per core).
    "no_policy": {"torch_first": True, "env": {ENV: "0"}},
}


def seconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def sync_and_async(function: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median seconds of ``function`` in the main thread and in a worker thread, calls alternating."""
    function()
    asyncio.run(asyncio.to_thread(function))  # warm-up of both
    sync, asynchronous = [], []
    for _ in range(repeats):
        sync.append(seconds(function))
        asynchronous.append(seconds(lambda: asyncio.run(asyncio.to_thread(function))))
    result = {"sync_s": statistics.median(sync), "async_s": statistics.median(asynchronous)}
    result["sync_over_async"] = result["sync_s"] / result["async_s"]
    return result


def child(policy: str, repeats: int, max_new_tokens: int) -> None:
    """Measure in this process, started the way ``policy`` says; print one JSON object."""
    if POLICIES[policy]["torch_first"]:
        import torch  # noqa: F401  (before comprexit_rag, on purpose)
    from comprexit_rag import defaults, threads

    compressor, reader = defaults.default_compressor("cpu"), defaults.default_reader("cpu")
    soft = compressor.compress([PASSAGE], ratio=4)
    calls = {
        "answer": lambda: reader.generate(QUESTION, soft, max_new_tokens=max_new_tokens),
        "compress": lambda: compressor.compress([PASSAGE], ratio=4),
    }
    results = {name: sync_and_async(function, repeats) for name, function in calls.items()}
    info = {
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "forward_threads": threads.forward_threads(),
        "passage_tokens": int(soft.num_tokens),
    }
    print(json.dumps({"info": info, "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--out")
    parser.add_argument("--child", choices=tuple(POLICIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, args.max_new_tokens)
        return

    import torch
    from benchmark_environment import machine_environment

    results: dict[str, dict] = {}
    for scenario in ("idle", "competing_process"):
        competitor = None
        if scenario == "competing_process":
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
            time.sleep(2)
        try:
            for policy, setup in POLICIES.items():
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", ENV)}
                command = [sys.executable, __file__, "--child", policy, "--repeats", str(args.repeats)]
                command += ["--max-new-tokens", str(args.max_new_tokens)]
                done = subprocess.run(command, env={**env, **setup["env"]}, capture_output=True, text=True, check=True)
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                for call, numbers in measured["results"].items():
                    key = f"{scenario}/{policy}/{call}"
                    results[key] = {**numbers, **measured["info"]}
                    print(key, {k: round(v, 3) for k, v in numbers.items()}, flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()

    report = {
        "command": "HF_HUB_OFFLINE=1 python benchmarks/thread_contention.py "
        "--out benchmarks/results/thread_contention.json",
        "environment": machine_environment(torch.device("cpu")),
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "results": results,
        "note": "sync: the main thread (pipeline.ask, reader.invoke); async: a worker thread (ainvoke, aquery). "
        "This machine is shared: other processes ran in every scenario (load average in environment).",
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
