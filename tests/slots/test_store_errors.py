"""Slot store keys and fingerprint files: typed errors for what a caller or a damaged disk can hand it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"


import pytest

from comprexit_rag import (
    CheckpointError,
    InvalidInputError,
)
from comprexit_rag.slots import SlotStore, content_key
from comprexit_rag.testing import LONE_SURROGATE


def test_store_key_and_fingerprint_file_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        content_key(LONE_SURROGATE)
    with pytest.raises(InvalidInputError, match="str"):
        content_key(None)  # type: ignore[arg-type]
    store = SlotStore(tmp_path, "head-X")
    assert store.put_many([], [], []) == []
    (store.path / "fingerprint.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"fingerprint\.json is corrupt"):
        SlotStore(tmp_path, "head-X")
    assert SlotStore.fingerprints(tmp_path) == []  # skipped with a warning, not a crash
