"""Reading a corpus: binary tails, control characters and undecodable records."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import logging

from comprexit_rag.corpus import read_corpus


def test_corpus_late_binary_control_characters_and_surrogate_records(tmp_path, caplog):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "late-binary.txt").write_bytes(b"plain text " * 1000 + b"\x00\x01\x02 binary tail")
    (folder / "control.txt").write_text("Bell\x07 and escape\x1b[1m codes.\x0c Still text.", encoding="utf-8")
    (folder / "latin1.md").write_bytes("Café".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.corpus"):
        passages = read_corpus(folder)
    assert [p.title for p in passages] == ["control"] and "\x07" in passages[0].text
    assert "late-binary.txt: it looks binary" in caplog.text and "latin1.md: not valid UTF-8" in caplog.text

    records = tmp_path / "corpus.jsonl"
    records.write_text('{"text": "good"}\n{"text": "bad \\ud800 surrogate"}\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.corpus"):
        assert [p.text for p in read_corpus(records)] == ["good"]
    assert "lone surrogate" in caplog.text
