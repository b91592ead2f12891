"""One durable-write rule for every file the library must not tear (comprexit_rag.durable)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from comprexit_rag import durable


def test_atomic_write_replaces_the_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "state.json"
    durable.atomic_write_json(target, {"step": 1})
    durable.atomic_write(target, lambda path: path.write_text('{"step": 2}'))
    assert json.loads(target.read_text()) == {"step": 2} and os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    durable.atomic_write_json(target, {"step": 1})

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        durable.atomic_write_json(target, {"step": 2})
    with pytest.raises(OSError, match="No space"):
        durable.atomic_write(target, lambda path: path.write_text("torn"))
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"step": 1} and os.listdir(tmp_path) == ["state.json"]


def test_file_systems_that_cannot_fsync_a_directory_are_tolerated(tmp_path, monkeypatch):
    real = os.fsync

    def no_directory_fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", no_directory_fsync)
    durable.atomic_write(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(FileExistsError):
        durable.write_new(tmp_path / "a.bin", b"again")  # write_new never overwrites
