"""Black-box sweep of the faults and bad inputs of issue 22: no silent loss, no silent wrong answers.

Every case either expects a typed error (a ``ComprExITError``, or exit status 2 with a message from
the CLI) or expects the operation to work and checks its result (nothing lost, the right answer).
Outcomes:

``typed``      a typed error, as expected;
``handled``    it worked and the result checked out;
``traceback``  an exception that is not a ``ComprExITError``;
``silent``     a wrong result or a bad input accepted without a word;
``loss``       passages that were indexed are gone;
``refused``    a typed error where the operation should have worked.

It runs on the tiny random Llama of the tests (with the real SmolLM2 tokenizer), the real
all-MiniLM-L6-v2 embedder and faiss, in a few minutes on a CPU; the concurrency cases start real
processes. Run it from the repository root (``python benchmarks/reliability_sweep.py --out
results.json``); docs/RELIABILITY.md quotes its figures.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from comprexit_rag.backbone import Backbone
from comprexit_rag.cli import main as cli
from comprexit_rag.corpus import read_corpus
from comprexit_rag.default_model import default_backbone_dir
from comprexit_rag.errors import ComprExITError
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever
from comprexit_rag.scale.vllm_inputs import decode_prompt_embeds
from comprexit_rag.slots import SlotStore

ROOT = Path(__file__).resolve().parents[1]
PASSAGES = [
    {"id": f"p{i}", "title": f"Topic {i}", "text": f"Passage {i} tells that item {i} weighs {3 * i + 1} kilograms."}
    for i in range(12)
]
QUESTION = "How much does item 3 weigh?"


@dataclass
class Case:
    group: str
    name: str
    expect: str  # "typed": a ComprExITError is the right answer; "works": the check must pass
    run: Callable[[Path], object]


CASES: list[Case] = []


def case(group: str, name: str, expect: str) -> Callable[[Callable[[Path], object]], Callable[[Path], object]]:
    def register(function: Callable[[Path], object]) -> Callable[[Path], object]:
        CASES.append(Case(group, name, expect, function))
        return function

    return register


class Loss(AssertionError):
    """Passages that were indexed are gone."""


# ---------------------------------------------------------------------------------------------
# Models, shared by every case.
# ---------------------------------------------------------------------------------------------


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    )
    return Backbone(LlamaForCausalLM(config), TOKENIZER, name="tiny")


TOKENIZER = AutoTokenizer.from_pretrained(default_backbone_dir())
BACKBONE = tiny_backbone()
torch.manual_seed(1)
HEAD = ComprExITHead.for_backbone(BACKBONE)
EMBEDDER = DenseRetriever().embedder


def build(directory: Path) -> RAGPipeline:
    retriever = DenseRetriever(EMBEDDER, embedder_name=DEFAULT_EMBEDDER)
    return RAGPipeline.build(directory, backbone=BACKBONE, head=HEAD, retriever=retriever)


def load(directory: Path, backbone: Backbone = BACKBONE) -> RAGPipeline:
    return RAGPipeline.load(directory, backbone=backbone, embedder=EMBEDDER)


def expect_all(directory: Path, records: list[dict]) -> bool:
    """Every record is in the retriever and has stored slots, else :class:`Loss`."""
    pipeline = load(directory)
    missing = sorted({r["id"] for r in records} - set(pipeline.retriever.ids))
    if missing:
        raise Loss(f"{len(missing)} of {len(records)} passages gone: {missing[:5]}")
    return pipeline.index([]).stored == len(pipeline)


# ---------------------------------------------------------------------------------------------
# 1. Concurrent writers.
# ---------------------------------------------------------------------------------------------


@case("concurrent writers", "two pipeline objects: p1.index(X); p2.index(Y)", "works")
def _(tmp: Path) -> bool:
    build(tmp / "rag")
    first, second = load(tmp / "rag"), load(tmp / "rag")
    first.index(PASSAGES[:6])
    second.index(PASSAGES[6:])
    return expect_all(tmp / "rag", PASSAGES)


@case("concurrent writers", "long-lived object indexes after another object indexed", "works")
def _(tmp: Path) -> bool:
    build(tmp / "rag").index(PASSAGES[:4])
    web_app = load(tmp / "rag")
    load(tmp / "rag").index(PASSAGES[4:8])  # a CLI run in between
    web_app.index(PASSAGES[8:])
    return expect_all(tmp / "rag", PASSAGES)


@case("concurrent writers", "three objects interleaved, each indexing twice", "works")
def _(tmp: Path) -> bool:
    build(tmp / "rag")
    writers = [load(tmp / "rag") for _ in range(3)]
    for round_ in range(2):
        for number, writer in enumerate(writers):
            start = 2 * (3 * round_ + number)
            writer.index(PASSAGES[start : start + 2])
    return expect_all(tmp / "rag", PASSAGES)


WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from comprexit_rag.backbone import Backbone
    from comprexit_rag.default_model import default_backbone_dir
    from comprexit_rag.errors import IndexBusyError
    from comprexit_rag.rag import RAGPipeline

    directory, delay, passages = Path(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152)
    backbone = Backbone(LlamaForCausalLM(config), AutoTokenizer.from_pretrained(default_backbone_dir()), name="tiny")
    time.sleep(delay)
    deadline = time.monotonic() + 120
    while True:  # what a user does on IndexBusyError: wait and rerun
        try:
            RAGPipeline.open(directory, backbone=backbone).index(passages)
            break
        except IndexBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    """
)


def two_processes(tmp: Path, delay: float) -> bool:
    script = tmp / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    halves = (PASSAGES[:6], PASSAGES[6:])
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp / "rag"), str(wait), json.dumps(records)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for wait, records in zip((0.0, delay), halves, strict=True)
    ]
    errors = [writer.communicate(timeout=300)[1] for writer in writers]
    if any(writer.returncode for writer in writers):
        raise RuntimeError("a writer failed: " + " | ".join(e.strip().splitlines()[-1] for e in errors if e.strip()))
    return expect_all(tmp / "rag", PASSAGES)


for _delay in (0.0, 1.0, 3.0):
    case("concurrent writers", f"two processes open + index a fresh directory, started {_delay:g} s apart", "works")(
        lambda tmp, delay=_delay: two_processes(tmp, delay)
    )


# ---------------------------------------------------------------------------------------------
# 2. Duplicate ids.
# ---------------------------------------------------------------------------------------------

CHUNKED = [
    {"id": "0", "title": "Doc A", "text": "Alpha is the first letter."},
    {"id": "1", "title": "Doc A", "text": "Beta is the second letter."},
    {"id": "0", "title": "Doc B", "text": "Gamma rays are photons."},
    {"id": "1", "title": "Doc B", "text": "Delta is a river mouth."},
]


@case("duplicate ids", "ids numbered per document, in one index() call", "typed")
def _(tmp: Path) -> object:
    return build(tmp / "rag").index(CHUNKED)


@case("duplicate ids", "an id reused with other text in a later run", "typed")
def _(tmp: Path) -> object:
    pipeline = build(tmp / "rag")
    pipeline.index(CHUNKED[:2])
    return pipeline.index(CHUNKED[2:])


@case("duplicate ids", "ids numbered per document, in a JSONL corpus", "typed")
def _(tmp: Path) -> object:
    corpus = tmp / "chunks.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in CHUNKED), encoding="utf-8")
    return read_corpus(corpus)


@case("duplicate ids", "the same records indexed twice", "works")
def _(tmp: Path) -> bool:
    pipeline = build(tmp / "rag")
    pipeline.index(CHUNKED[:2])
    pipeline.index(CHUNKED[:2])
    return expect_all(tmp / "rag", CHUNKED[:2]) and len(load(tmp / "rag")) == 2


@case("duplicate ids", "two files of a folder numbering their records alike", "works")
def _(tmp: Path) -> bool:
    (tmp / "docs").mkdir()
    for name, records in (("a.jsonl", CHUNKED[:2]), ("b.jsonl", CHUNKED[2:])):
        text = "".join(json.dumps(record) + "\n" for record in records)
        (tmp / "docs" / name).write_text(text, encoding="utf-8")
    passages = read_corpus(tmp / "docs")
    build(tmp / "rag").index(passages)
    return len(load(tmp / "rag")) == 4


# ---------------------------------------------------------------------------------------------
# 3. Slot shard integrity.
# ---------------------------------------------------------------------------------------------


def indexed_copy(tmp: Path) -> tuple[Path, str]:
    """An indexed pipeline, and the answer a pristine copy of it gives."""
    build(tmp / "rag").index(PASSAGES)
    shutil.copytree(tmp / "rag", tmp / "pristine")
    return tmp / "rag", load(tmp / "pristine").ask(QUESTION, k=3, max_new_tokens=6).answer


def shard_of(directory: Path) -> Path:
    (shard,) = (directory / "slots").glob("*/shard-*.safetensors")
    return shard


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset if offset >= 0 else path.stat().st_size + offset)
        handle.write(data)


def answer_checked(directory: Path, expected: str) -> bool:
    """The answer after the fault: a typed error propagates; a different answer is silent."""
    return load(directory).ask(QUESTION, k=3, max_new_tokens=6).answer == expected


@case("slot integrity", "slot bytes overwritten in place (same size), then ask", "typed")
def _(tmp: Path) -> bool:
    directory, expected = indexed_copy(tmp)
    overwrite(shard_of(directory), -256, bytes(range(256)))
    return answer_checked(directory, expected)


@case("slot integrity", "a header byte flipped, then ask", "typed")
def _(tmp: Path) -> bool:
    directory, expected = indexed_copy(tmp)
    overwrite(shard_of(directory), 12, b"\x00")
    return answer_checked(directory, expected)


@case("slot integrity", "slots overwritten with fp16 NaN, then ask", "typed")
def _(tmp: Path) -> bool:
    directory, expected = indexed_copy(tmp)
    overwrite(shard_of(directory), -64, b"\x00\x7e" * 32)
    return answer_checked(directory, expected)


@case("slot integrity", "slot bytes overwritten, then the repair the error names (index --verify)", "works")
def _(tmp: Path) -> bool:
    directory, expected = indexed_copy(tmp)
    overwrite(shard_of(directory), -256, bytes(range(256)))
    try:
        load(directory).ask(QUESTION, k=3, max_new_tokens=6)
    except ComprExITError as error:
        if "--verify" not in str(error):
            return False
    load(directory).index([], verify=True)
    return answer_checked(directory, expected)


@case("slot integrity", "a truncated shard, then a plain index rerun", "works")
def _(tmp: Path) -> bool:
    directory, expected = indexed_copy(tmp)
    shard = shard_of(directory)
    shard.write_bytes(shard.read_bytes()[:-100])
    load(directory).index([])
    return answer_checked(directory, expected)


# ---------------------------------------------------------------------------------------------
# 4. Backbone fingerprint.
# ---------------------------------------------------------------------------------------------


@case("backbone fingerprint", "a head on a random-weight copy of its backbone", "typed")
def _(tmp: Path) -> object:
    return ComprExITCompressor(tiny_backbone(seed=7), HEAD)


@case("backbone fingerprint", "a stored index loaded with a random-weight copy of its backbone", "typed")
def _(tmp: Path) -> object:
    build(tmp / "rag").index(PASSAGES[:3])
    return load(tmp / "rag", backbone=tiny_backbone(seed=7))


@case("backbone fingerprint", "the same backbone in bfloat16", "works")
def _(tmp: Path) -> bool:
    copy = tiny_backbone(seed=0)
    return Backbone(copy.model.to(torch.bfloat16), TOKENIZER).fingerprint == BACKBONE.fingerprint


# ---------------------------------------------------------------------------------------------
# 5. Config values.
# ---------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("sinkhorn_iterations", 0),
    ("sinkhorn_iterations", -1),
    ("depth_temperature", -0.5),
    ("depth_temperature", 0),
    ("uniform_mix", 1.5),
    ("sinkhorn_epsilon", 0),
    ("segment_length", 0),
    ("segment_length", -512),
    ("source_temperature", 0),
    ("key_dim", 0),
    ("trained_ratios", [0]),
    ("locality_weight", float("nan")),
]


def head_with(tmp: Path, field: str, value: object) -> object:
    """Load a head whose config.json holds a bad value and compress with it (slots made: silent)."""
    saved = HEAD.save_pretrained(tmp / "head")
    metadata = json.loads((saved / "config.json").read_text())
    metadata["config"][field] = value
    (saved / "config.json").write_text(json.dumps(metadata))
    head = ComprExITHead.from_pretrained(saved)
    return ComprExITCompressor(BACKBONE, head).compress([PASSAGES[0]["text"]])


for _field, _value in BAD_VALUES:
    case("config values", f"head config.json {_field} = {_value!r}", "typed")(
        lambda tmp, field=_field, value=_value: head_with(tmp, field, value)
    )

for _payload in ("[]", '"a string"'):

    @case("config values", f"head config.json holding {_payload}", "typed")
    def _(tmp: Path, payload: str = _payload) -> object:
        saved = HEAD.save_pretrained(tmp / "head")
        (saved / "config.json").write_text(payload)
        return ComprExITHead.from_pretrained(saved)


@case("config values", "pipeline.json holding []", "typed")
def _(tmp: Path) -> object:
    build(tmp / "rag")
    (tmp / "rag" / "pipeline.json").write_text("[]")
    return load(tmp / "rag")


# ---------------------------------------------------------------------------------------------
# 6. Stored paths.
# ---------------------------------------------------------------------------------------------


def manifest_escape(tmp: Path, name: str) -> bool:
    store = SlotStore(tmp / "slots", "fingerprint")
    store.put_many(["a"], [torch.ones(2, 4)], [3])
    record = json.loads(store.manifest_path.read_text().splitlines()[0])
    outside = tmp / "outside.safetensors"
    outside.write_bytes((store.path / record["shard"]).read_bytes())
    record.update(shard=name if name != "ABSOLUTE" else str(outside))
    record.update(entries=[{"key": "b", "shape": [2, 4], "tokens": 3}])
    with open(store.manifest_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    reopened = SlotStore(tmp / "slots", "fingerprint")
    # Right: the line is ignored (b is not served) and verify() reports it.
    return reopened.get("b") is None and bool(reopened.verify())


for _name in ("../../outside.safetensors", "ABSOLUTE"):
    case("stored paths", f"manifest shard name {_name.lower()}", "works")(
        lambda tmp, name=_name: manifest_escape(tmp, name)
    )


def index_file_escape(tmp: Path, index_file: str) -> object:
    retriever = DenseRetriever(EMBEDDER, embedder_name=DEFAULT_EMBEDDER)
    retriever.add(["One passage."])
    state_path = retriever.save(tmp / "retriever")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp / "retriever" / json.loads(state_path.read_text())["index_file"], elsewhere / "x.faiss")
    state = json.loads(state_path.read_text())
    state["index_file"] = index_file.replace("ELSEWHERE", str(elsewhere / "x.faiss"))
    state_path.write_text(json.dumps(state))
    return DenseRetriever.load(tmp / "retriever", EMBEDDER)


for _index_file in ("/etc/passwd", "ELSEWHERE", "../elsewhere/x.faiss"):
    case("stored paths", f"retriever.json index_file = {_index_file.lower()}", "typed")(
        lambda tmp, index_file=_index_file: index_file_escape(tmp, index_file)
    )


# ---------------------------------------------------------------------------------------------
# 7. Ordinary mistakes.
# ---------------------------------------------------------------------------------------------


def cli_exit(argv: list[str]) -> None:
    status = cli(argv)
    if status == 2:
        raise ComprExITError(f"exit status 2: {argv}")  # the CLI's typed-error path
    raise AssertionError(f"exit status {status}")


@case("ordinary mistakes", "index --out pointing at a file", "typed")
def _(tmp: Path) -> None:
    (tmp / "corpus.jsonl").write_text(json.dumps({"text": "A passage."}) + "\n", encoding="utf-8")
    (tmp / "a-file").write_text("x")
    cli_exit(["index", str(tmp / "corpus.jsonl"), "--out", str(tmp / "a-file")])


@case("ordinary mistakes", "index --out under a file", "typed")
def _(tmp: Path) -> None:
    (tmp / "corpus.jsonl").write_text(json.dumps({"text": "A passage."}) + "\n", encoding="utf-8")
    (tmp / "a-file").write_text("x")
    cli_exit(["index", str(tmp / "corpus.jsonl"), "--out", str(tmp / "a-file" / "rag")])


for _entry in (None, "a string", 3):

    @case("ordinary mistakes", f"retriever metadata entry {_entry!r}", "typed")
    def _(tmp: Path, entry: object = _entry) -> object:
        retriever = DenseRetriever(EMBEDDER, embedder_name=DEFAULT_EMBEDDER)
        retriever.add(["One passage."])
        state_path = retriever.save(tmp / "retriever")
        state = json.loads(state_path.read_text())
        state["metadata"] = [entry]
        state_path.write_text(json.dumps(state))
        return DenseRetriever.load(tmp / "retriever", EMBEDDER).search("passage", k=1)


for _raw in (b"not a torch file", b"\x80\x04K\x01.", b"PK\x03\x04" + bytes(40)):
    case("ordinary mistakes", f"decode_prompt_embeds of {_raw[:12]!r}", "typed")(
        lambda tmp, raw=_raw: decode_prompt_embeds(base64.b64encode(raw))
    )


# ---------------------------------------------------------------------------------------------
# 8. Folders and long records.
# ---------------------------------------------------------------------------------------------


@case("folders and long records", "a folder of .txt, .jsonl and .json files", "works")
def _(tmp: Path) -> bool:
    folder = tmp / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("Cats purr when content.", encoding="utf-8")
    (folder / "a.jsonl").write_text(json.dumps({"title": "A", "text": "Alpha."}) + "\n", encoding="utf-8")
    (folder / "b.json").write_text(json.dumps([{"title": "B", "text": "Beta."}]), encoding="utf-8")
    return len(read_corpus(folder)) == 3


@case("folders and long records", "a JSONL record of 20,000 words, then ask", "works")
def _(tmp: Path) -> bool:
    words = [f"w{i}" for i in range(20_000)]
    words[15_000:15_006] = ["The", "vault", "code", "is", "8841", "today."]
    corpus = tmp / "long.jsonl"
    corpus.write_text(json.dumps({"id": "big", "title": "Big", "text": " ".join(words)}) + "\n", encoding="utf-8")
    passages = read_corpus(corpus)
    pipeline = build(tmp / "rag")
    pipeline.index(passages)
    answer = pipeline.ask("What is the vault code?", k=3, max_new_tokens=2)  # must fit the reader
    return len(passages) > 1 and any("8841" in pipeline.retriever.get(s.id).text for s in answer.sources)


# ---------------------------------------------------------------------------------------------


def run_case(item: Case) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="sweep-") as scratch:
        try:
            result = item.run(Path(scratch))
        except Loss as error:
            return "loss", str(error)
        except ComprExITError as error:
            if item.expect == "typed":
                return "typed", f"{type(error).__name__}: {str(error)[:160]}"
            return "refused", f"{type(error).__name__}: {str(error)[:160]}"
        except Exception as error:  # classifying every failure is the point
            frame = traceback.extract_tb(error.__traceback__)[-1]
            return (
                "traceback",
                f"{type(error).__name__}: {str(error)[:120]} ({Path(frame.filename).name}:{frame.lineno})",
            )
    if item.expect == "typed":
        return "silent", f"accepted without an error (returned {type(result).__name__})"
    return ("handled", "checked") if result is True else ("silent", f"wrong result ({result!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("-k", default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    outcomes = []
    started = time.perf_counter()
    for item in CASES:
        if args.k not in item.name:
            continue
        outcome, detail = run_case(item)
        outcomes.append({"group": item.group, "case": item.name, "outcome": outcome, "detail": detail})
        print(f"{outcome:10} {item.group:26} {item.name}: {detail}", flush=True)
    counts = collections.Counter(o["outcome"] for o in outcomes)
    summary = {
        "cases": len(outcomes),
        **dict(sorted(counts.items())),
        "seconds": math.ceil(time.perf_counter() - started),
    }
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "outcomes": outcomes}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
