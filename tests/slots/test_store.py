"""Tests of SlotStore: round trips, fingerprint isolation, crash safety and failure handling."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import errno
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from comprexit_rag.errors import CheckpointError
from comprexit_rag.slots import SlotStore, content_key
from comprexit_rag.slots.store import fingerprint_dirname
from comprexit_rag.testing import manifest_keys as committed_keys

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = 16
FP = "head-A:sha256=0123"


def key_of(i: int) -> str:
    return content_key(f"passage number {i}")


def slots_for(key: str, hidden: int = HIDDEN) -> torch.Tensor:
    """Deterministic slots of a key: 1 to 7 rows of standard normal values."""
    seed = int(key[:8], 16)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1 + seed % 7, hidden, generator=generator)


def tokens_for(key: str) -> int:
    return 10 + int(key[:4], 16) % 500


def put(store: SlotStore, keys: list[str]) -> list[str]:
    return store.put_many(keys, [slots_for(k) for k in keys], [tokens_for(k) for k in keys])


def manifest_keys(store_dir: Path, fingerprint: str = FP) -> list[str]:
    """Every key the manifest of ``fingerprint``'s store commits (duplicates kept)."""
    return committed_keys(store_dir / fingerprint_dirname(fingerprint) / "manifest.jsonl")


def files_of(store_dir: Path, fingerprint: str = FP) -> dict[str, bytes]:
    head = store_dir / fingerprint_dirname(fingerprint)
    return {path.name: path.read_bytes() for path in sorted(head.iterdir())}


def _writer_main(argv: list[str]) -> None:
    """Body of the writer subprocesses: ``directory mode batches``."""
    directory, mode, batches = argv[0], argv[1], int(argv[2])
    store = SlotStore(directory, FP)
    if mode == "exit-before-manifest":  # die after the 3rd shard is renamed, before its line
        original = SlotStore._append_manifest
        calls = [0]

        def crash_before_line(self: SlotStore, fd: int, record: dict) -> None:
            calls[0] += 1
            if calls[0] == 3:
                os._exit(17)
            original(self, fd, record)

        SlotStore._append_manifest = crash_before_line  # type: ignore[method-assign]
    elif mode == "exit-mid-line":  # die halfway through writing the 3rd manifest line
        real_pwrite = os.pwrite
        calls = [0]

        def torn_pwrite(fd: int, data: bytes, offset: int) -> int:
            calls[0] += 1
            if calls[0] == 3:
                real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
                os._exit(18)
            return real_pwrite(fd, data, offset)

        os.pwrite = torn_pwrite
    for batch in range(batches):
        put(store, [key_of(3 * batch + j) for j in range(3)])


# The writer imports comprexit_rag.slots.store without running the package __init__ (which pulls in
# transformers), so that each crash subprocess starts in a couple of seconds.
WRITER_CODE = """
import sys, types
root, tests = sys.argv[1], sys.argv[2]
package = types.ModuleType("comprexit_rag")
package.__path__ = [root + "/comprexit_rag"]
sys.modules["comprexit_rag"] = package
sys.path[:0] = [root, tests]
import test_store
test_store._writer_main(sys.argv[3:])
"""


def run_writer(directory: Path, mode: str, batches: int) -> subprocess.Popen:
    code = WRITER_CODE
    args = [sys.executable, "-c", code, str(ROOT), str(Path(__file__).parent), str(directory), mode, str(batches)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_round_trip_within_fp16_tolerance(tmp_path: Path) -> None:
    keys = [key_of(i) for i in range(20)]
    store = SlotStore(tmp_path, FP)
    assert len(store) == 0 and store.hidden_size is None
    written = store.put_many(keys, [slots_for(k, 576) for k in keys], [tokens_for(k) for k in keys])
    assert written == keys
    assert len(store) == 20 and store.hidden_size == 576
    assert keys[3] in store and key_of(999) not in store
    assert store.missing([key_of(999), keys[0], key_of(999)]) == [key_of(999)]
    assert store.size_on_disk() > 20 * 576 * 2

    reopened = SlotStore(tmp_path, FP)  # reads only the manifest
    assert len(reopened) == 20
    got = reopened.get_many([keys[5], key_of(999), *keys])
    assert got[1] is None
    for key, tensor in zip([keys[5], key_of(999), *keys], got, strict=True):
        if tensor is None:
            continue
        expected = slots_for(key, 576)
        assert tensor.dtype == torch.float32 and tensor.shape == expected.shape
        torch.testing.assert_close(tensor, expected, atol=4e-3, rtol=1e-3)
        assert reopened.shape(key) == tuple(expected.shape)
        assert reopened.token_count(key) == tokens_for(key)
    with pytest.raises(KeyError):
        reopened.token_count(key_of(999))
    assert reopened.verify() == []


def test_reput_is_noop_and_large_puts_split(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, FP, max_shard_bytes=200)  # ~2 passages of 16-wide slots per shard
    keys = [key_of(i) for i in range(10)]
    assert put(store, keys[:4]) == keys[:4]
    changed = [torch.zeros_like(slots_for(k)) for k in keys]
    assert store.put_many(keys + keys[:2], changed + changed[:2], [1] * 12) == keys[4:]
    assert store.put_many(keys, changed, [1] * 10) == []
    assert len(store) == 10
    assert sorted(manifest_keys(tmp_path)) == sorted(keys)  # no duplicates on disk
    assert len(list(store.path.glob("shard-*.safetensors"))) > 2
    first = store.get(keys[0])
    assert first is not None and first.abs().sum() > 0  # first write wins
    assert store.token_count(keys[0]) == tokens_for(keys[0]) and store.token_count(keys[9]) == 1


def test_fingerprint_isolation(tmp_path: Path) -> None:
    key = key_of(1)
    head_a = SlotStore(tmp_path, "head-A")
    head_b = SlotStore(tmp_path, "head-B")
    head_a.put_many([key], [torch.ones(3, HIDDEN)], [7])
    assert key in head_a and key not in head_b
    assert head_b.get(key) is None and head_b.missing([key]) == [key]
    assert SlotStore(tmp_path, "head-B").get(key) is None  # also after reopening
    head_b.put_many([key], [torch.full((2, 8), -1.0)], [9])
    a_slots, b_slots = SlotStore(tmp_path, "head-A").get(key), SlotStore(tmp_path, "head-B").get(key)
    assert a_slots is not None and b_slots is not None
    assert a_slots.shape == (3, HIDDEN) and bool((a_slots == 1).all())
    assert b_slots.shape == (2, 8) and bool((b_slots == -1).all())
    assert sorted(SlotStore.fingerprints(tmp_path)) == ["head-A", "head-B"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.zeros(2, HIDDEN).index_fill_(1, torch.tensor([3]), float("nan")), "NaN"),
        (torch.zeros(2, HIDDEN).index_fill_(1, torch.tensor([0]), float("-inf")), "NaN or inf"),
        (torch.full((1, HIDDEN), 1e6), "fp16 range"),
        (torch.zeros(HIDDEN), "2-D"),
        (torch.zeros(2, 3, HIDDEN), "2-D"),
        (torch.zeros(0, HIDDEN), "empty"),
        (torch.zeros(2, HIDDEN, dtype=torch.int64), "float"),
    ],
)
def test_bad_slots_rejected(tmp_path: Path, tensor: torch.Tensor, message: str) -> None:
    store = SlotStore(tmp_path, FP)
    good = key_of(1)
    with pytest.raises(ValueError, match=message):
        store.put_many([good, key_of(2)], [slots_for(good), tensor], [1, 2])
    assert len(store) == 0
    assert not list(store.path.glob("shard-*")) and not list(store.path.glob(".*tmp"))


def test_hidden_size_and_argument_checks(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, FP)
    put(store, [key_of(1)])
    with pytest.raises(ValueError, match="hidden size"):
        store.put_many([key_of(2)], [torch.zeros(2, HIDDEN + 1)], [1])
    with pytest.raises(ValueError, match="token count"):
        store.put_many([key_of(2)], [torch.zeros(2, HIDDEN)], [-1])
    with pytest.raises(ValueError, match="as many"):
        store.put_many([key_of(2)], [], [])
    assert len(store) == 1


def test_crash_between_shard_and_manifest_then_resume(tmp_path: Path) -> None:
    proc = run_writer(tmp_path, "exit-before-manifest", batches=10)
    assert proc.wait(timeout=60) == 17, proc.stderr.read() if proc.stderr else ""
    store = SlotStore(tmp_path, FP)
    committed = [key_of(i) for i in range(6)]  # two batches committed, the third shard orphaned
    assert len(store) == 6 and store.missing(committed) == []
    assert len(list(store.path.glob("shard-*.safetensors"))) == 3
    problems = store.verify()
    assert len(problems) == 1 and "orphan" in problems[0]

    wanted = [key_of(i) for i in range(12)]
    assert store.missing(wanted) == wanted[6:]
    assert put(store, wanted) == wanted[6:]  # resume writes only the missing keys
    assert sorted(manifest_keys(tmp_path)) == sorted(wanted)
    store.verify(repair=True)  # deletes the orphan
    assert store.verify() == []
    assert len(list(store.path.glob("shard-*.safetensors"))) == 3  # 2 committed + 1 resumed
    reopened = SlotStore(tmp_path, FP)
    for key, tensor in zip(wanted, reopened.get_many(wanted), strict=True):
        assert tensor is not None
        torch.testing.assert_close(tensor, slots_for(key), atol=4e-3, rtol=1e-3)


def test_torn_manifest_line_is_ignored(tmp_path: Path) -> None:
    proc = run_writer(tmp_path, "exit-mid-line", batches=10)
    assert proc.wait(timeout=60) == 18, proc.stderr.read() if proc.stderr else ""
    manifest = tmp_path / fingerprint_dirname(FP) / "manifest.jsonl"
    assert not manifest.read_bytes().endswith(b"\n")  # the last line really is torn
    store = SlotStore(tmp_path, FP)
    assert len(store) == 6
    assert any("incomplete line" in p for p in store.verify())

    assert put(store, [key_of(i) for i in range(9)]) == [key_of(i) for i in range(6, 9)]
    reopened = SlotStore(tmp_path, FP)  # the torn tail was truncated before the append
    assert len(reopened) == 9
    assert sorted(manifest_keys(tmp_path)) == sorted(key_of(i) for i in range(9))
    reopened.verify(repair=True)
    assert reopened.verify() == []


def test_kill_9_writer_leaves_consistent_store(tmp_path: Path) -> None:
    proc = run_writer(tmp_path, "plain", batches=100_000)
    manifest = tmp_path / fingerprint_dirname(FP) / "manifest.jsonl"
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 15:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    store = SlotStore(tmp_path, FP)
    on_disk = manifest_keys(tmp_path)
    assert len(on_disk) == len(set(on_disk)) == len(store) >= 45
    stored = sorted(store, key=lambda k: on_disk.index(k))
    for key, tensor in zip(stored, store.get_many(stored), strict=True):
        assert tensor is not None
        torch.testing.assert_close(tensor, slots_for(key), atol=4e-3, rtol=1e-3)
        assert store.token_count(key) == tokens_for(key)
    assert all("orphan" in p or "incomplete" in p for p in store.verify())

    wanted = [key_of(i) for i in range(len(store) + 9)]
    missing = store.missing(wanted)
    assert put(store, wanted) == missing and len(missing) >= 9
    store.verify(repair=True)
    assert store.verify() == []
    final = manifest_keys(tmp_path)
    assert len(final) == len(set(final)) == len(SlotStore(tmp_path, FP))


def test_disk_full_during_shard_write_leaves_store_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SlotStore(tmp_path, FP)
    put(store, [key_of(0)])
    before = files_of(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        put(store, [key_of(1), key_of(2)])
    monkeypatch.undo()
    assert files_of(tmp_path) == before  # temp file removed, nothing else touched
    assert len(store) == 1 and key_of(1) not in store
    assert len(SlotStore(tmp_path, FP)) == 1
    assert put(store, [key_of(1)]) == [key_of(1)]  # the store still works


def test_disk_full_during_manifest_append_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SlotStore(tmp_path, FP)
    put(store, [key_of(0)])
    before = files_of(tmp_path)
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError, match="No space"):
        put(store, [key_of(1)])
    monkeypatch.undo()
    assert files_of(tmp_path) == before  # shard removed, manifest truncated back

    real_fsync = os.fsync
    calls = [0]

    def fail_third_fsync(fd: int) -> None:  # temp shard, directory, then the manifest line
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_third_fsync)
    with pytest.raises(OSError, match="No space"):
        put(store, [key_of(1)])
    monkeypatch.undo()
    assert files_of(tmp_path) == before
    assert len(store) == 1 and len(SlotStore(tmp_path, FP)) == 1
    assert store.verify() == []


def test_verify_detects_corrupt_shard_and_repair_makes_keys_missing(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, FP)
    put(store, [key_of(0), key_of(1)])
    put(store, [key_of(2)])
    assert store.verify() == []
    victim = store.path / json.loads((store.path / "manifest.jsonl").read_bytes().split(b"\n")[0])["shard"]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: safetensors still parses it
    victim.write_bytes(bytes(data))

    reopened = SlotStore(tmp_path, FP)
    problems = reopened.verify()
    assert len(problems) == 1 and "corrupt" in problems[0] and victim.name in problems[0]
    reopened.verify(repair=True)
    assert reopened.missing([key_of(i) for i in range(3)]) == [key_of(0), key_of(1)]
    assert not victim.exists()
    assert put(reopened, [key_of(i) for i in range(3)]) == [key_of(0), key_of(1)]
    assert reopened.verify() == []
    assert len(SlotStore(tmp_path, FP)) == 3


def test_missing_shard_file_raises_clear_error(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, FP)
    put(store, [key_of(0)])
    for shard in store.path.glob("shard-*.safetensors"):
        shard.write_bytes(b"garbage")
    reopened = SlotStore(tmp_path, FP)
    with pytest.raises(CheckpointError, match="verify"):
        reopened.get_many([key_of(0)])
    assert any("corrupt" in p for p in reopened.verify())


def test_concurrent_readers_and_writer(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, FP, max_open_shards=4)
    put(store, [key_of(0)])
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                keys = [key_of(i) for i in range(61)]
                for key, tensor in zip(keys, store.get_many(keys), strict=True):
                    if tensor is not None:
                        torch.testing.assert_close(tensor, slots_for(key), atol=4e-3, rtol=1e-3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for start in range(1, 61, 3):  # keys 1..60
        put(store, [key_of(start + j) for j in range(3)])
    done.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(store) == 61 and store.verify() == []
