"""The CLI turns bad arguments and faults into exit code 2 with one line, and an interrupt into 130."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from comprexit_rag import (
    ComprExITHead,
)
from comprexit_rag.cli import main
from comprexit_rag.testing import CONTROL, PASSAGES, damage_checkpoint


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_backbone) -> dict[str, Path]:
    """The tiny backbone and heads for it (good, truncated, for another backbone) saved to disk."""
    root = tmp_path_factory.mktemp("cli-models")
    tiny_backbone.model.save_pretrained(root / "backbone")
    tiny_backbone.tokenizer.save_pretrained(root / "backbone")
    torch.manual_seed(3)
    head = ComprExITHead.for_backbone(tiny_backbone)
    head.save_pretrained(root / "head")
    truncated = head.save_pretrained(root / "truncated-head")
    damage_checkpoint(truncated, "truncated")
    other = dataclasses.replace(head.fingerprint, num_hidden_layers=head.fingerprint.num_hidden_layers + 1)
    ComprExITHead(head.config, other).save_pretrained(root / "foreign-head")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in PASSAGES), encoding="utf-8")
    return {name: root / name for name in ("backbone", "head", "truncated-head", "foreign-head", "corpus.jsonl")}


def cli(*argv: object) -> int:
    return main([str(arg) for arg in argv])


def test_cli_turns_bad_arguments_and_faults_into_exit_2_with_a_message(tmp_path, model_dirs, capsys, embedder):
    out, corpus = tmp_path / "rag", model_dirs["corpus.jsonl"]
    models = ["--backbone", model_dirs["backbone"], "--head", model_dirs["head"], "--no-progress"]
    cases = [
        (["index", corpus, "--out", out, "--ratio", 0, *models], "ratio must be"),
        (["index", corpus, "--out", tmp_path / "foreign", "--backbone", model_dirs["backbone"], "--head",
          model_dirs["foreign-head"]], "trained for backbone"),
        (["index", corpus, "--out", tmp_path / "broken", "--backbone", model_dirs["backbone"], "--head",
          model_dirs["truncated-head"]], "truncated or corrupt"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli(*argv) == 2, argv
        assert message in capsys.readouterr().err, argv

    assert cli("index", corpus, "--out", out, *models) == 0
    capsys.readouterr()
    asks = [
        (["ask", out, ""], "non-empty string"),
        (["ask", out, "Why " + "very " * 5000 + "long?"], "does not fit the reader"),
        (["ask", out, "Invalid \udcff bytes?"], "not valid Unicode"),  # what argv holds for non-UTF-8 bytes
    ]
    for argv, message in asks:
        assert cli(*argv) == 2, argv[:3]
        assert message in capsys.readouterr().err, argv[:3]
    assert cli("ask", out, CONTROL, "--k", 100, "--max-new-tokens", 2, "--json") == 0
    assert len(json.loads(capsys.readouterr().out)["sources"]) == len(PASSAGES)
    # Counts are checked by argparse: a usage error, exit status 2, before anything loads.
    for argv in (
        ["ask", out, "Who?", "--k", "three"],
        ["ask", out, "Who?", "--k", 0],
        ["index", corpus, "--out", out, "--limit", 0],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli(*argv)
        assert exit_info.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err


def test_cli_interrupt_exits_130_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("comprexit_rag.corpus.read_corpus", interrupted)
    assert cli("index", tmp_path, "--out", tmp_path / "rag") == 130
    assert "committed work is kept" in capsys.readouterr().err
