"""benchmarks/gpu/reader_adapter.sh, the one script a GPU session runs, dry-run on the CPU.

A broken path in it costs a whole GPU session, so each way of running it that BENCHMARKS.md prescribes is
run here with a stand-in ``python3`` (it records its arguments and writes the files the real commands
would; the script's own JSON-reading snippets run in the real interpreter) and a stand-in ``nvidia-smi``.
``FINISHED=false`` makes every training it stands in for end before its last step (a piece of a longer run).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$1" in
  -c) case "$2" in *default_backbone_dir*|*"import torch"*) echo stand-in; exit 0;; esac
      exec "$REAL_PYTHON" "$@";;
  -) exec "$REAL_PYTHON" "$@";;
esac
[ "$1 $2" = "-m pip" ] && exit 0
previous=""
for argument in "$@"; do
  case "$previous" in
    --output-dir) mkdir -p "$argument/final" "$argument/checkpoint"; echo '{}' > "$argument/checkpoint/state.json"
                  echo '{}' > "$argument/final/config.json"
                  echo '{"loss": 1.0}' > "$argument/log.jsonl"
                  echo "{\"steps\": 7, \"finished\": ${FINISHED:-true}}" > "$argument/summary.json";;
    --out) mkdir -p "$(dirname "$argument")"; echo '{}' > "$argument"
           case "$argument" in *.jsonl) echo '{}' > "${argument%.jsonl}.manifest.json";; esac
           case "$(basename "$argument")" in
             binding-*|compare-*) echo '{"reconstruction_nq": {"own_nats": 1.0}}' > "$argument";;
           esac;;
  esac
  previous=$argument
done
"""


def run_script(tmp_path: Path, **settings: str) -> tuple[list[str], str, Path]:
    """Run the script from a copy of what it reads; returns the stand-in's calls, the output and $RESULTS."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks" / "gpu", work / "benchmarks" / "gpu")
    shutil.copytree(ROOT / "experiments", work / "experiments")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho stand-in GPU\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    results, calls = tmp_path / "results", tmp_path / "calls.txt"
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "REAL_PYTHON": sys.executable,
        "CALLS": str(calls),
        "RUNS": str(tmp_path / "runs"),
        "RESULTS": str(results),
        "THROUGHPUT": "0",
        **settings,
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu/reader_adapter.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("ALL DONE"), done.stdout
    return calls.read_text().splitlines(), done.stdout, results


def packed(folder: Path) -> set[str]:
    """The files in the tar that ``folder``'s parts make up."""
    joined = b"".join(part.read_bytes() for part in sorted(folder.glob("*.tar.part-*")))
    with tarfile.open(fileobj=io.BytesIO(joined)) as archive:
        return set(archive.getnames())


def trainings(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("-m comprexit_rag.cli -v train")]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_baselines_only_session_trains_and_packs_each_baseline(tmp_path):
    calls, out, results = run_script(
        tmp_path, PIECE_S="0", SFT_S="0", BASELINES="baseline-full-lora-sft baseline-comi-sft"
    )
    runs = tmp_path / "runs"
    assert trainings(calls) == [  # no pretraining piece, no QA stage; the files' own step counts
        f"-m comprexit_rag.cli -v train --save-every 100 --config experiments/reader_adapter/{name}.json "
        f"--output-dir {runs}/{name}"
        for name in ("baseline-full-lora-sft", "baseline-comi-sft")
    ]
    assert any("--method full-lora" in call for call in calls) and any("--method comi" in call for call in calls)
    assert "baseline-full-lora-sft READY" in out and "baseline-comi-sft READY" in out
    assert out.index("baseline-full-lora-sft TRAINED") < out.index("baseline-full-lora-sft READY")
    assert list((results / "state").glob("baseline-comi-sft.final.tar.part-*"))  # its weights, before its scores
    assert (results / "out" / "baseline-full-lora-sft.tgz").is_file() and (
        results / "out" / "baseline-comi-sft.tgz"
    ).is_file()
    # Each baseline is also read among retrieved passages, in a call of its own, and that table comes back with it.
    among_retrieved = [call for call in calls if "--nq-retrieved 400" in call]
    assert [call.split("--head ")[1].split()[0] for call in among_retrieved] == [
        f"{runs}/baseline-full-lora-sft/final",
        f"{runs}/baseline-comi-sft/final",
    ]
    with tarfile.open(results / "out" / "baseline-comi-sft.tgz") as packed:
        assert "baseline-comi-sft-quality-retrieved.json" in packed.getnames()
    # full-lora's adapter also reads truncated text at 4, 8 and 16x (truncation with the same adapter budget).
    truncations = [call for call in calls if "--method truncate" in call]
    assert [call.split("--ratio ")[1].split()[0] for call in truncations] == ["4", "8", "16"]
    assert all(f"--reader-adapter {runs}/baseline-full-lora-sft/final" in call for call in truncations)
    with tarfile.open(results / "out" / "baseline-full-lora-sft.tgz") as packed:
        assert "baseline-full-lora-sft-truncate-16x-quality.json" in packed.getnames()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_baseline_trained_in_an_earlier_session_is_scored_not_trained_again(tmp_path):
    carried = tmp_path / "runs" / "baseline-comi-sft"  # as unpack_payload.sh lays out pack_payload.sh TRAINED=
    (carried / "final").mkdir(parents=True)
    (carried / "final" / "config.json").write_text("{}")
    (carried / "summary.json").write_text('{"steps": 918, "finished": true}')
    calls, out, results = run_script(
        tmp_path, PIECE_S="0", SFT_S="0", BASELINES="baseline-comi-sft same-budget-comprexit-sft"
    )
    (training,) = trainings(calls)
    assert "--config experiments/reader_adapter/same-budget-comprexit-sft.json" in training
    assert f"--method comi --head {carried}/final" in " ".join(calls)
    assert "baseline-comi-sft READY" in out and "same-budget-comprexit-sft READY" in out
    assert not list((results / "state").glob("baseline-comi-sft.final.tar.part-*"))  # its weights are already back
    with tarfile.open(results / "out" / "baseline-comi-sft.tgz") as packed:
        assert {"baseline-comi-sft-quality.json", "baseline-comi-sft/summary.json"} <= set(packed.getnames())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_piece_then_its_qa_stage_then_baselines_for_as_many_steps(tmp_path):
    calls, out, results = run_script(tmp_path, PIECE_S="5", SFT_S="9", BASELINES="baseline-mean-pool-sft")
    runs = tmp_path / "runs"
    piece, qa, baseline = trainings(calls)
    assert "--piece-seconds 5" in piece and f"--output-dir {runs}/pretrain" in piece
    assert f"--init-from {runs}/pretrain/final --time-budget 9 --output-dir {runs}/sft" in qa
    assert "--max-steps 7" in baseline  # the QA stage's steps (its summary.json)
    assert out.index("PIECE READY") < out.index("QA HEAD READY") < out.index("STATE READY")
    assert out.index("STATE READY") < out.index("baseline-mean-pool-sft READY")
    assert list((results / "piece").glob("piece.tar.part-*")) and list((results / "state").glob("state.tar.part-*"))
    # The QA head and the shipped one (no --head) among retrieved passages; NQ_RETRIEVED=0 turns it off.
    among_retrieved = [call for call in calls if "--nq-retrieved" in call]
    assert f"--head {runs}/sft/final" in among_retrieved[0] and "--head" not in among_retrieved[1]
    assert (results / "sft-quality-retrieved.json").is_file() and (results / "shipped-quality-retrieved.json").is_file()
    calls, _, _ = run_script(tmp_path / "off", PIECE_S="5", SFT_S="9", NQ_RETRIEVED="0")
    assert not any("--nq-retrieved" in call for call in calls)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_qa_stage_distilled_from_a_full_lora_teacher(tmp_path):
    config = "experiments/reader_adapter/sft-4x-mixed-full-lora-teacher.json"
    calls, _, _ = run_script(
        tmp_path, PIECE_S="0", SFT_INIT="/tmp/init", SFT_S="1100", SFT_CONFIG=config, DISTILL_TEACHER="/tmp/teacher"
    )
    (qa,) = trainings(calls)
    assert f"--config {config} --init-from /tmp/init --distill-teacher /tmp/teacher --time-budget 1100" in qa
    calls, _, _ = run_script(tmp_path / "own", PIECE_S="0", SFT_INIT="/tmp/init", SFT_S="1100")
    assert "--distill-teacher" not in trainings(calls)[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_multi_ratio_pretraining_session_then_its_shorter_qa_pass(tmp_path):
    """experiments/reader-adapter-multi-ratio-pretrain.json's two sessions, as its description prescribes."""
    pretrain = "experiments/reader_adapter/pretrain-multi-ratio-continue-b256.json"
    calls, out, _ = run_script(
        tmp_path / "pretrain",
        PRETRAIN_CONFIG=pretrain,
        PRETRAIN_INIT="/tmp/init",
        PIECE_S="1000",
        SFT_S="0",
        OTHER_RATIOS="8 16",
        NQ_RETRIEVED="0",
    )
    (piece,) = trainings(calls)
    assert "--init-from /tmp/init --piece-seconds 1000" in piece and "PIECE READY" in out
    scored = [call for call in calls if "--ratio" in call and "pretrain/final" in call]
    assert [call.split("--ratio ")[1].split()[0] for call in scored] == ["8", "16"]
    config = "experiments/reader_adapter/sft-multi-ratio-reading-b128.json"
    settings = dict(PIECE_S="0", SFT_INIT="/tmp/init", SFT_PIECE_S="900", SFT_CONFIG=config, SFT_MAX_STEPS="460")
    calls, _, _ = run_script(tmp_path / "qa", DISTILL_TEACHER="/tmp/teacher", **settings)
    (qa,) = trainings(calls)
    assert f"--config {config} --max-steps 460 --init-from /tmp/init --distill-teacher /tmp/teacher" in qa


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_one_session_chains_the_pretraining_and_a_qa_piece_until_a_deadline(tmp_path):
    """Both stages of the multi-ratio pretraining experiment on one machine: the QA piece gets the time left."""
    config = "experiments/reader_adapter/sft-multi-ratio-reading-b128.json"
    settings = dict(
        PRETRAIN_CONFIG="experiments/reader_adapter/pretrain-multi-ratio-continue-b256.json",
        PRETRAIN_INIT="/tmp/init",
        PIECE_S="900",
        SFT_CONFIG=config,
        SFT_MAX_STEPS="460",
        DISTILL_TEACHER="/tmp/teacher",
        NQ_RETRIEVED="0",
    )
    deadline = int(time.time()) + 1000
    calls, out, _ = run_script(tmp_path / "chained", SFT_UNTIL=str(deadline), **settings)
    piece, qa = trainings(calls)
    assert "--piece-seconds 900" in piece
    runs = tmp_path / "chained" / "runs"
    assert f"--max-steps 460 --init-from {runs}/pretrain/final --distill-teacher /tmp/teacher" in qa
    seconds = int(qa.split("--piece-seconds ")[1].split()[0])
    assert 900 <= seconds <= 1000
    # The finished pretraining comes back as its head and adapter, without the optimizer state.
    assert packed(tmp_path / "chained" / "results" / "piece") == {
        "pretrain/final/config.json",
        "pretrain/log.jsonl",
        "pretrain/summary.json",
    }
    # A pretraining piece that stopped short is not a head to fine-tune: its state comes back, no QA stage runs.
    calls, out, results = run_script(tmp_path / "short", SFT_UNTIL=str(deadline), FINISHED="false", **settings)
    assert len(trainings(calls)) == 1 and "no QA stage this session" in out
    assert "PIECE READY" in out
    assert packed(results / "piece") == {"pretrain/checkpoint/state.json", "pretrain/log.jsonl"}
    # A deadline already past: the pretraining's results, no QA piece.
    calls, out, _ = run_script(tmp_path / "late", SFT_UNTIL=str(int(time.time()) - 5), **settings)
    assert len(trainings(calls)) == 1 and "under 60 s left" in out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_an_80_gb_card_reads_a_batch_128_stage_in_smaller_passes(tmp_path):
    config = "experiments/reader_adapter/sft-4x-mixed-continue-reading-b128.json"  # asks for 131,072
    settings = dict(PIECE_S="0", SFT_INIT="/tmp/init", SFT_S="700", SFT_CONFIG=config)
    calls, _, _ = run_script(tmp_path / "h100", GPU_MIB="81559", **settings)
    assert f"--config {config} --max-pass-tokens 65536 --init-from /tmp/init" in trainings(calls)[0]
    calls, _, _ = run_script(tmp_path / "h200", GPU_MIB="143771", **settings)
    assert "--max-pass-tokens" not in trainings(calls)[0]
    batch_32 = dict(settings, SFT_CONFIG="experiments/reader_adapter/sft-4x-mixed.json")  # 32,768: left alone
    calls, _, _ = run_script(tmp_path / "b32", GPU_MIB="81559", **batch_32)
    assert "--max-pass-tokens" not in trainings(calls)[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_qa_stage_in_pieces_with_teacher_pairs(tmp_path):
    config = "experiments/reader_adapter/sft-4x-mixed-teacher-qa.json"
    calls, out, results = run_script(
        tmp_path, PIECE_S="0", SFT_INIT="/tmp/init", SFT_PIECE_S="900", TEACHER_QA="2wiki", SFT_CONFIG=config
    )
    teacher = next(i for i, call in enumerate(calls) if "teacher-qa" in call)
    (qa,) = trainings(calls)
    assert teacher < calls.index(qa) and "--out runs/teacher-qa/2wiki.jsonl" in calls[teacher]
    assert "--teacher comprexit_rag/pretrained/comprexit-smollm2-135m " in calls[teacher]  # the shipped head answers
    assert f"--config {config} --init-from /tmp/init --piece-seconds 900 --output-dir {tmp_path}/runs/sft" in qa
    # The piece reached the run's last step: its final head comes back, not its optimizer state.
    assert "SFT PIECE READY" not in out and not list((results / "sft-piece").glob("piece.tar.part-*"))
    assert (results / "teacher-qa" / "2wiki.manifest.json").is_file()
    assert "QA HEAD READY" in out and any("--head" in call and "runs/sft/final" in call for call in calls)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_teacher_pairs_answered_by_the_full_lora_reader(tmp_path):
    config = "experiments/reader_adapter/sft-4x-mixed-continue-teacher-qa-b128.json"
    calls, _, _ = run_script(
        tmp_path,
        PIECE_S="0",
        SFT_INIT="/tmp/init",
        SFT_S="500",
        TEACHER_QA="2wiki",
        TEACHER_QA_FROM="/tmp/teacher",
        DISTILL_TEACHER="/tmp/teacher",
        SFT_CONFIG=config,
    )
    teacher = next(call for call in calls if "teacher-qa" in call)
    assert "--teacher /tmp/teacher --source 2wiki --limit 6119 --out runs/teacher-qa/2wiki.jsonl" in teacher
    (qa,) = trainings(calls)
    assert f"--config {config} --init-from /tmp/init --distill-teacher /tmp/teacher --time-budget 500" in qa


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_qa_piece_that_ends_before_its_last_step_is_not_scored(tmp_path):
    config = "experiments/reader_adapter/sft-4x-mixed-2pass.json"
    calls, out, results = run_script(
        tmp_path, PIECE_S="0", SFT_INIT="/tmp/init", SFT_PIECE_S="900", SFT_CONFIG=config, FINISHED="false"
    )
    assert "SFT PIECE READY" in out and list((results / "sft-piece").glob("piece.tar.part-*"))
    assert "QA HEAD READY" not in out and not any("slot_quality.py" in call for call in calls)


def collect(tmp_path: Path, out: Path) -> str:
    """Run benchmarks/gpu/collect.sh once (a poll) into ``out``; returns what it printed."""
    out.mkdir()
    env = os.environ | {
        "RUNS": str(tmp_path / "runs"),
        "RESULTS": str(tmp_path / "results"),
        "LOG": str(tmp_path / "run.log"),
        "SENT": str(tmp_path / "sent"),
        "OUT": str(out),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "collect.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def save_generation(run: Path, step: int, size: int) -> None:
    """A checkpoint laid out as training/checkpoints.py writes it, its optimizer ``size`` bytes of noise."""
    generation = run / "checkpoint" / f"step-{step:07d}"
    (generation / "module").mkdir(parents=True)
    (generation / "module" / "config.json").write_text("{}")
    (generation / "optimizer.pt").write_bytes(os.urandom(size))
    (run / "checkpoint" / "state.json").write_text(f'{{"step": {step}, "files": "step-{step:07d}"}}')


def unpack(out: Path | list[Path], run: str, into: Path) -> Path:
    """Join a run's checkpoint parts, from one poll's folder or several, and untar them into ``into``."""
    polls = out if isinstance(out, list) else [out]
    parts = sorted((part for poll in polls for part in poll.glob(f"{run}.*.ckpt.tar.part-*")), key=lambda p: p.name)
    into.mkdir()
    subprocess.run(["tar", "xf", "-", "-C", str(into)], input=b"".join(p.read_bytes() for p in parts), check=True)
    return into / run


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_each_poll_brings_back_the_progress_and_a_running_runs_newest_checkpoint(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    (tmp_path / "run.log").write_text("STATE READY\n")
    running = runs / "baseline-comi-sft"
    save_generation(running, 100, 20 << 20)  # two 15 MiB parts
    (running / "log.jsonl").write_text('{"step": 100}\n')
    finished = runs / "baseline-full-lora-sft"
    save_generation(finished, 918, 1 << 10)
    (finished / "summary.json").write_text('{"steps": 918}')
    (results / "out").mkdir(parents=True)
    (results / "out" / "baseline-full-lora-sft.tgz").write_bytes(b"scored")
    (results / "piece").mkdir()
    (results / "piece" / "piece.tar.part-aa").write_bytes(b"piece")

    first = tmp_path / "poll1"
    printed = collect(tmp_path, first)
    assert "baseline-comi-sft: checkpoint step-0000100, parts sent in this poll: 2, left for the next: 0" in printed
    back = unpack(first, "baseline-comi-sft", tmp_path / "back1")
    state = running / "checkpoint" / "state.json"
    assert back.joinpath("checkpoint", "state.json").read_text() == state.read_text()
    generation = running / "checkpoint" / "step-0000100" / "optimizer.pt"
    assert back.joinpath("checkpoint", "step-0000100", "optimizer.pt").read_bytes() == generation.read_bytes()
    assert back.joinpath("log.jsonl").is_file()
    assert not list(first.glob("baseline-full-lora-sft.ckpt*"))  # finished: its results come in progress.tgz
    assert first.joinpath("piece-piece.tar.part-aa").read_bytes() == b"piece"
    listed = subprocess.run(["tar", "tzf", str(first / "progress.tgz")], capture_output=True, text=True).stdout
    expected = ("run.log", "baseline-comi-sft/log.jsonl", "baseline-full-lora-sft/summary.json")
    for name in (*expected, "out/baseline-full-lora-sft.tgz"):
        assert f"progress/{name}" in listed.replace("./", ""), name

    # Nothing new: only the progress comes back. A newer generation: it comes back, the old one is gone.
    second = tmp_path / "poll2"
    collect(tmp_path, second)
    assert [path.name for path in second.iterdir()] == ["progress.tgz"]
    save_generation(running, 200, 1 << 10)
    shutil.rmtree(running / "checkpoint" / "step-0000100")
    third = tmp_path / "poll3"
    collect(tmp_path, third)
    back = unpack(third, "baseline-comi-sft", tmp_path / "back3")
    assert sorted(path.name for path in (back / "checkpoint").iterdir()) == ["state.json", "step-0000200"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_poll_skips_a_checkpoint_being_replaced_and_sends_a_large_one_over_several_polls(tmp_path):
    running = tmp_path / "runs" / "sft"
    save_generation(running, 300, 1 << 10)
    shutil.rmtree(running / "checkpoint" / "step-0000300")  # the next save removed it after state.json was read
    out = tmp_path / "poll1"
    assert "was replaced while copying" in collect(tmp_path, out)
    assert [path.name for path in out.iterdir()] == ["progress.tgz"]

    # An optimizer state makes a checkpoint larger than a call brings back (session 21: 5 parts of 15 MiB):
    # it comes back over two polls, whole, and a newer generation saved meanwhile waits until it has.
    shutil.rmtree(running / "checkpoint")
    save_generation(running, 400, 110 << 20)  # 8 parts
    expected = (running / "checkpoint" / "step-0000400" / "optimizer.pt").read_bytes()
    polls = [tmp_path / "poll2", tmp_path / "poll3", tmp_path / "poll4"]
    assert "step-0000400, parts sent in this poll: 4, left for the next: 4" in collect(tmp_path, polls[0])
    shutil.rmtree(running / "checkpoint")
    save_generation(running, 500, 1 << 10)
    assert "step-0000400, parts sent in this poll: 4, left for the next: 0" in collect(tmp_path, polls[1])
    back = unpack(polls[:2], "sft", tmp_path / "back")
    assert back.joinpath("checkpoint", "step-0000400", "optimizer.pt").read_bytes() == expected
    assert "step-0000500, parts sent in this poll: 1, left for the next: 0" in collect(tmp_path, polls[2])
    assert [path.name for path in polls[2].glob("sft.*")] == ["sft.step-0000500.ckpt.tar.part-aa"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_poll_brings_back_no_more_than_a_call_holds_and_the_rest_next_time(tmp_path):
    """A call brings back about 64 MiB in all: six 15 MiB parts of a piece's state take two polls, none lost."""
    piece = tmp_path / "results" / "sft-piece"
    piece.mkdir(parents=True)
    for suffix in "abcdef":
        (piece / f"piece.tar.part-a{suffix}").write_bytes(os.urandom(15 << 20))
    first, second = tmp_path / "poll1", tmp_path / "poll2"
    assert "more parts wait for the next poll" in collect(tmp_path, first)
    sent = sorted(path.name for path in first.iterdir() if path.name != "progress.tgz")
    assert len(sent) == 4  # 60 MiB + progress.tgz: a fifth part would pass MAX_MIB (63)
    collect(tmp_path, second)
    sent += sorted(path.name for path in second.iterdir() if path.name != "progress.tgz")
    assert sent == [f"sft-piece-piece.tar.part-a{suffix}" for suffix in "abcdef"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_checkpoint_travels_weights_first_so_a_machine_lost_mid_way_leaves_them_home(tmp_path):
    """Session 33 got 4 of 6 parts home before the machine went, and the head's weights were in the other two."""
    running = tmp_path / "runs" / "pretrain"
    save_generation(running, 300, 50 << 20)
    module = running / "checkpoint" / "step-0000300" / "module"
    (module / "reader_adapter").mkdir()
    weights = {
        "model.safetensors": os.urandom(8 << 20),
        "reader_adapter/adapter_model.safetensors": os.urandom(19 << 20),
    }
    for name, data in weights.items():
        (module / name).write_bytes(data)

    first = tmp_path / "poll1"
    assert "parts sent in this poll: 4, left for the next: 2" in collect(tmp_path, first)
    parts = sorted(first.glob("pretrain.*.ckpt.tar.part-*"))
    home = tmp_path / "home"
    home.mkdir()
    joined = b"".join(part.read_bytes() for part in parts)
    subprocess.run(["tar", "xf", "-", "-C", str(home)], input=joined, capture_output=True)  # ends mid-optimizer
    back = home / "pretrain" / "checkpoint"
    assert back.joinpath("state.json").is_file()
    for name, data in weights.items():
        assert back.joinpath("step-0000300", "module", name).read_bytes() == data, name
    assert back.joinpath("step-0000300", "module", "config.json").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_piece_packs_its_weights_before_its_optimizer_state(tmp_path):
    runs = tmp_path / "runs"
    save_generation(runs / "sft", 100, 1 << 10)
    done = subprocess.run(
        ["bash", "-c", f'source benchmarks/gpu/tar_weights_first.sh && tar_weights_first "{runs}" sft/checkpoint'],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        names = archive.getnames()
    assert names[-1] == "sft/checkpoint/step-0000100/optimizer.pt"
    assert set(names) == {
        "sft/checkpoint/state.json",
        "sft/checkpoint/step-0000100/module/config.json",
        "sft/checkpoint/step-0000100/optimizer.pt",
    }


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_shipped_weights_go_away_for_an_upload_and_come_back_unchanged(tmp_path):
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "gpu").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu" / "shipped_heads.sh", repo / "benchmarks" / "gpu")
    head = repo / "comprexit_rag" / "pretrained" / "head"
    (head / "reader_adapter").mkdir(parents=True)
    weights = {head / "model.safetensors": os.urandom(1 << 10), head / "reader_adapter" / "adapter.safetensors": b"a"}
    for path, data in weights.items():
        path.write_bytes(data)
    (head / "config.json").write_text("{}")

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True)

    def shipped(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "benchmarks/gpu/shipped_heads.sh", action], cwd=repo, capture_output=True, text=True
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "heads")
    assert shipped("away").returncode == 0
    assert not any(path.exists() for path in weights)
    assert (head / "config.json").is_file()  # only the weights leave
    assert shipped("back").returncode == 0
    assert all(path.read_bytes() == data for path, data in weights.items())

    (head / "model.safetensors").write_bytes(b"retrained, not committed")
    refused = shipped("away")
    assert refused.returncode == 2 and "uncommitted" in refused.stderr
    assert (head / "model.safetensors").read_bytes() == b"retrained, not committed"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_comparison_of_arms_from_a_shipped_head_scores_each_at_its_ratio(tmp_path):
    calls, output, results = run_script(
        tmp_path,
        COMPARE="1",
        COMPARE_ARMS="experiments/reader_adapter/binding-16x-*.json",
        PRETRAIN_INIT="comprexit_rag/pretrained/comprexit-smollm2-135m-multi-ratio",
        PIECE_S="0",
        SFT_S="0",
        NQ_RETRIEVED="0",
    )
    arms = trainings(calls)
    assert len(arms) == 2
    for arm, name in zip(arms, ("binding-16x-off", "binding-16x-on"), strict=True):
        assert f"--config experiments/reader_adapter/{name}.json" in arm
        assert "--init-from comprexit_rag/pretrained/comprexit-smollm2-135m-multi-ratio" in arm
    scored = [call for call in calls if call.startswith("benchmarks/slot_quality.py") and "binding-16x" in call]
    assert len(scored) == 2 and all(
        "--ratio 16" in call and "--recon-lengths 32 64 128 256 512" in call for call in scored
    )
    assert "winner" in output and (results / "compare.json").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_qa_stage_carried_back_mid_way_resumes_without_its_pretraining(tmp_path):
    """Session 35's call: the QA stage that session 34 chained after its pretraining, resumed from its checkpoint
    (unpack_payload.sh puts it in $RUNS/sft) with neither the pretraining nor SFT_INIT there."""
    save_generation(tmp_path / "runs" / "sft", 126, 1 << 10)
    calls, out, _ = run_script(
        tmp_path, PIECE_S="0", SFT_PIECE_S="1330", SFT_MAX_STEPS="918", NQ_RETRIEVED="0", RECON_LENGTHS="32 512"
    )
    (qa,) = trainings(calls)
    assert "--config experiments/reader_adapter/sft-4x-mixed.json" in qa
    assert f"--output-dir {tmp_path / 'runs' / 'sft'}" in qa
    assert "--max-steps 918" in qa and "--piece-seconds 1330" in qa
    assert "QA HEAD READY" in out
    assert any("slot_quality.py --head" in call and "--recon-lengths 32 512" in call for call in calls)
