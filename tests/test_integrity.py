"""No silent loss, no silent wrong answers (issue 22).

Concurrent writers of one pipeline directory, ids that repeat with other text, bit rot in slot
shards, backbones with other weights, unchecked config values, stored paths that lead out of the
index, and folders and records the corpus reader used to pass over. Each test failed before its fix.
They run with the tiny random Llama of ``conftest.py``, the real all-MiniLM-L6-v2 embedder and
real faiss; the two-process test starts real Python processes (bounded in time).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import comprexit_rag.rag.pipeline as pipeline_module
import comprexit_rag.slots.checks as store_checks
from comprexit_rag.backbone import Backbone
from comprexit_rag.cli import main as cli
from comprexit_rag.corpus import read_corpus
from comprexit_rag.errors import BackboneMismatchError, CheckpointError, DefaultModelUnavailableError, InvalidInputError
from comprexit_rag.methods.comi import COMIConfig
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.config import ComprExITConfig
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.methods.mean_pool import MeanPoolConfig
from comprexit_rag.methods.soft_prompt import SoftPromptConfig
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.rag.directory import PIPELINE_FILE
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever
from comprexit_rag.scale.vllm_inputs import decode_prompt_embeds
from comprexit_rag.slots import SlotStore
from comprexit_rag.testing import untrained_pipeline

ROOT = Path(__file__).resolve().parents[1]

FIRST = [
    {"id": "curie", "title": "Marie Curie", "text": "Marie Curie won Nobel Prizes in physics and in chemistry."},
    {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower in Paris was built from 1887 to 1889."},
    {"id": "fleming", "title": "Penicillin", "text": "Penicillin was discovered in 1928 by Alexander Fleming."},
]
SECOND = [
    {"id": "baikal", "title": "Lake Baikal", "text": "Lake Baikal in Siberia is the deepest lake in the world."},
    {"id": "apollo", "title": "Apollo 11", "text": "Apollo 11 landed Neil Armstrong on the Moon in July 1969."},
]


@pytest.fixture(scope="module")
def embedder():
    from sentence_transformers import SentenceTransformer

    from comprexit_rag.retrieval import default_embedder_path

    try:
        return SentenceTransformer(str(default_embedder_path()), device="cpu")
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default embedder unavailable: {error}")


@pytest.fixture(scope="module")
def head(tiny_backbone) -> ComprExITHead:
    torch.manual_seed(1)
    return ComprExITHead.for_backbone(tiny_backbone)


def load(directory: Path, backbone: Backbone, embedder) -> RAGPipeline:
    return RAGPipeline.load(directory, backbone=backbone, embedder=embedder)


def other_weights(backbone: Backbone, seed: int) -> Backbone:
    """The same architecture, sizes and tokenizer as ``backbone``, with other (random) weights."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**backbone.model.config.to_dict()))
    return Backbone(model, backbone.tokenizer, name=backbone.name)


# ---------------------------------------------------------------------------------------------
# 1. Concurrent writers never drop each other's passages.
# ---------------------------------------------------------------------------------------------


def test_two_pipeline_objects_on_one_directory_keep_each_others_passages(tmp_path, tiny_backbone, embedder, head):
    directory = tmp_path / "rag"
    untrained_pipeline(directory, tiny_backbone, embedder, head=head)
    first, second = load(directory, tiny_backbone, embedder), load(directory, tiny_backbone, embedder)
    first.index(FIRST)
    second.index(SECOND)  # a web app's pipeline, loaded before `first` indexed
    first.index([])  # and back: nothing `second` added is dropped either

    reopened = load(directory, tiny_backbone, embedder)
    assert sorted(reopened.retriever.ids) == sorted(p["id"] for p in FIRST + SECOND)
    assert reopened.index([]).stored == len(FIRST + SECOND)
    assert reopened.ask("Who discovered penicillin?", k=5, max_new_tokens=2).stats.store_hits == 5


def test_a_build_racing_another_writer_loads_that_pipeline_instead_of_wiping_it(
    tmp_path, tiny_backbone, embedder, head, monkeypatch
):
    directory = tmp_path / "rag"
    loads = []

    def slow_backbone_load(backbone, recorded, device):
        # While this `open` loads its models, another process builds the directory and indexes.
        loads.append(backbone)
        if len(loads) == 1:
            untrained_pipeline(directory, tiny_backbone, embedder, head=head).index(FIRST)
        return tiny_backbone

    monkeypatch.setattr(pipeline_module, "load_backbone", slow_backbone_load)
    late = RAGPipeline.open(directory, backbone="tiny", head=head, embedder=embedder)
    assert len(late) == len(FIRST)  # it loaded the other writer's pipeline instead of saving an empty one
    late.index(SECOND)
    assert len(load(directory, tiny_backbone, embedder)) == len(FIRST + SECOND)
    assert loads.count("tiny") == 1  # the backbone the racing build loaded was reused, not loaded again


def test_a_racing_build_leaves_the_other_pipeline_and_its_head_untouched(
    tmp_path, tiny_backbone, embedder, head, monkeypatch
):
    directory = tmp_path / "rag"
    torch.manual_seed(2)
    other_head = ComprExITHead.for_backbone(tiny_backbone)
    real_load = pipeline_module.load_backbone

    def slow_backbone_load(backbone, recorded, device):
        monkeypatch.setattr(pipeline_module, "load_backbone", real_load)
        untrained_pipeline(directory, tiny_backbone, embedder, head=head).index(FIRST)  # the other process, meanwhile
        return tiny_backbone

    monkeypatch.setattr(pipeline_module, "load_backbone", slow_backbone_load)
    with pytest.raises(InvalidInputError, match="was built by another process meanwhile"):
        untrained_pipeline(directory, tiny_backbone, embedder, head=other_head)
    reopened = load(directory, tiny_backbone, embedder)
    assert reopened.compressor.fingerprint == ComprExITCompressor(tiny_backbone, head).fingerprint  # not other_head
    assert reopened.ask("Who discovered penicillin?", k=3, max_new_tokens=2).stats.store_misses == 0


WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    from transformers import AutoTokenizer

    from comprexit_rag.default_model import default_backbone_dir
    from comprexit_rag.rag import RAGPipeline
    from comprexit_rag.testing import tiny_llama

    directory, role, passages = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    flags = directory.parent

    def wait(name):
        deadline = time.monotonic() + 120
        while not (flags / name).exists():
            if time.monotonic() > deadline:
                sys.exit(f"{role}: timed out waiting for {name}")
            time.sleep(0.05)

    tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())
    backbone = tiny_llama(tokenizer, max_positions=2048, name="tiny")
    if role == "b":
        wait("a-open")
    pipeline = RAGPipeline.open(directory, backbone=backbone)
    (flags / f"{role}-open").touch()
    wait("b-open" if role == "a" else "a-done")  # b loaded before a indexes, and indexes after it
    print(pipeline.index(passages))
    (flags / f"{role}-done").touch()
    """
)


def test_two_index_processes_on_one_directory_lose_nothing(tmp_path, tiny_backbone, embedder):
    directory = tmp_path / "rag"
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), str(directory), role, json.dumps(passages)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, passages in (("a", FIRST), ("b", SECOND))
    ]
    try:
        outputs = [writer.communicate(timeout=240) for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    pipeline = RAGPipeline.load(directory, backbone=other_weights(tiny_backbone, 0), embedder=embedder)
    assert sorted(pipeline.retriever.ids) == sorted(p["id"] for p in FIRST + SECOND)
    assert pipeline.index([]).stored == len(FIRST + SECOND)


# ---------------------------------------------------------------------------------------------
# 2. Ids are keys: an id repeated with other text is refused, naming both records.
# ---------------------------------------------------------------------------------------------

CHUNKED = [  # a corpus that numbers chunks per document
    {"id": "0", "title": "Doc A", "text": "Alpha is the first letter."},
    {"id": "1", "title": "Doc A", "text": "Beta is the second letter."},
    {"id": "0", "title": "Doc B", "text": "Gamma rays are photons."},
    {"id": "1", "title": "Doc B", "text": "Delta is a river mouth."},
]


def test_an_id_repeated_with_other_text_is_refused_and_nothing_is_indexed(tmp_path, tiny_backbone, embedder, head):
    pipeline = untrained_pipeline(tmp_path / "rag", tiny_backbone, embedder, head=head)
    with pytest.raises(InvalidInputError, match=r"Passages 0 and 2 share the id '0'.*Doc A.*Doc B"):
        pipeline.index(CHUNKED)
    assert len(pipeline) == 0 and len(pipeline.store) == 0

    pipeline.index(CHUNKED[:2])
    pipeline.index(CHUNKED[:2])  # the same records again: a no-op
    with pytest.raises(InvalidInputError, match=r"id '0', which is already indexed with other text.*Doc A.*Doc B"):
        pipeline.index([{"id": "9", "text": "A new passage."}, CHUNKED[2]])  # a later run reusing an id
    assert sorted(load(tmp_path / "rag", tiny_backbone, embedder).retriever.ids) == ["0", "1"]


def test_read_corpus_names_both_records_of_a_repeated_id(tmp_path):
    corpus = tmp_path / "chunks.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in CHUNKED), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"Passages 0 and 2 of the corpus share the id '0'.*Doc A.*Doc B"):
        read_corpus(corpus)
    unique = [{**record, "id": f"{record['title']}#{record['id']}"} for record in CHUNKED]
    corpus.write_text("".join(json.dumps(record) + "\n" for record in unique), encoding="utf-8")
    assert len(read_corpus(corpus)) == 4


# ---------------------------------------------------------------------------------------------
# 3. Bit rot in a slot shard is caught when the shard is first read.
# ---------------------------------------------------------------------------------------------


def rot(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place: the file keeps its size, as with bit rot."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.mark.parametrize("where", ["slots", "header"])
def test_bit_rot_in_a_shard_is_an_error_and_index_verify_repairs_it(
    tmp_path, tiny_backbone, embedder, head, monkeypatch, where
):
    pipeline = untrained_pipeline(tmp_path / "rag", tiny_backbone, embedder, head=head)
    pipeline.index(FIRST)
    monkeypatch.setattr(store_checks, "_VERIFIED_SHARDS", set(), raising=False)  # as in a new process
    expected = pipeline.ask("Who discovered penicillin?", k=3, max_new_tokens=4).answer
    (shard,) = pipeline.store.path.glob("shard-*.safetensors")
    size = shard.stat().st_size
    rot(shard, size - 64 if where == "slots" else 10, b"\x7b" * 8)
    assert shard.stat().st_size == size

    monkeypatch.setattr(store_checks, "_VERIFIED_SHARDS", set(), raising=False)
    reopened = load(tmp_path / "rag", tiny_backbone, embedder)
    assert reopened.store.open_problems == []  # a size check cannot see it...
    with pytest.raises(CheckpointError, match=r"corrupted in place.*comprexit-rag index CORPUS --out DIR --verify"):
        reopened.ask("Who discovered penicillin?", k=3, max_new_tokens=4)  # ...the first read does
    report = reopened.index([], verify=True)  # what the message says to do
    assert report.compressed == report.stored == len(FIRST)
    assert reopened.ask("Who discovered penicillin?", k=3, max_new_tokens=4).answer == expected


def test_a_shard_is_hashed_once_per_process(tmp_path, monkeypatch):
    store = SlotStore(tmp_path / "slots", "fingerprint")
    store.put_many(["a", "b"], [torch.ones(2, 4), torch.zeros(3, 4)], [5, 7])
    monkeypatch.setattr(store_checks, "_VERIFIED_SHARDS", set(), raising=False)
    hashed = []
    real = store_checks.sha256_file
    monkeypatch.setattr(store_checks, "sha256_file", lambda path: hashed.append(path) or real(path))
    for _ in range(3):
        SlotStore(tmp_path / "slots", "fingerprint").get_many(["a", "b"])
    assert len(hashed) == 1


# ---------------------------------------------------------------------------------------------
# 4. The backbone fingerprint covers the weights.
# ---------------------------------------------------------------------------------------------


def test_a_backbone_with_other_weights_is_refused(tmp_path, tiny_backbone, embedder, head):
    impostor = other_weights(tiny_backbone, seed=123)  # same config and tokenizer, random weights
    assert impostor.fingerprint != tiny_backbone.fingerprint
    assert impostor.fingerprint.digest != tiny_backbone.fingerprint.digest
    with pytest.raises(BackboneMismatchError, match="weights"):
        ComprExITCompressor(impostor, head)
    untrained_pipeline(tmp_path / "rag", tiny_backbone, embedder, head=head).index(FIRST)
    with pytest.raises(BackboneMismatchError, match="was built with backbone"):
        load(tmp_path / "rag", impostor, embedder)


def test_the_weights_hash_ignores_dtype_and_identical_copies(tiny_backbone):
    copy = other_weights(tiny_backbone, seed=0)
    copy.model.load_state_dict(tiny_backbone.model.state_dict())
    assert copy.fingerprint.weights_sha256 == tiny_backbone.fingerprint.weights_sha256
    bf16 = Backbone(copy.model.to(torch.bfloat16), tiny_backbone.tokenizer)
    assert bf16.fingerprint == tiny_backbone.fingerprint and bf16.fingerprint.digest == tiny_backbone.fingerprint.digest


def test_checkpoints_and_pipelines_saved_before_the_weights_hash_still_load(tmp_path, tiny_backbone, embedder, head):
    saved = head.save_pretrained(tmp_path / "head")
    config = json.loads((saved / "config.json").read_text())
    del config["backbone_fingerprint"]["weights_sha256"]
    (saved / "config.json").write_text(json.dumps(config, indent=2))
    old_head = ComprExITHead.from_pretrained(saved)
    assert old_head.fingerprint.weights_sha256 is None
    ComprExITCompressor(tiny_backbone, old_head)  # accepted: compared on the fields it records

    untrained_pipeline(tmp_path / "rag", tiny_backbone, embedder, head=head).index(FIRST)
    record_path = tmp_path / "rag" / PIPELINE_FILE
    record = json.loads(record_path.read_text())
    record["backbone_fingerprint"] = tiny_backbone.fingerprint.layout_digest  # as written before
    record_path.write_text(json.dumps(record))
    assert len(load(tmp_path / "rag", tiny_backbone, embedder)) == len(FIRST)
    assert json.loads(record_path.read_text())["backbone_fingerprint"] == tiny_backbone.fingerprint.digest


@pytest.mark.slow
def test_shipped_checkpoints_record_the_default_backbones_weights(real_backbone):
    from comprexit_rag.methods.comi import COMIMerger
    from comprexit_rag.methods.mean_pool import MeanPoolHead
    from comprexit_rag.methods.soft_prompt import SoftPrompt

    for module_class in (ComprExITHead, MeanPoolHead, COMIMerger, SoftPrompt):
        fingerprint = module_class.from_pretrained().fingerprint
        assert fingerprint.weights_sha256 == real_backbone.fingerprint.weights_sha256, module_class
    assert other_weights(real_backbone, seed=0).fingerprint != real_backbone.fingerprint


# ---------------------------------------------------------------------------------------------
# 5. Every config field is checked.
# ---------------------------------------------------------------------------------------------

BAD_HEAD_VALUES = [
    ("sinkhorn_iterations", 0),
    ("sinkhorn_iterations", -3),
    ("sinkhorn_iterations", 2.5),
    ("depth_temperature", 0),
    ("depth_temperature", -0.5),
    ("depth_temperature", float("nan")),
    ("source_temperature", 0),
    ("uniform_mix", 1.5),
    ("uniform_mix", -0.1),
    ("sinkhorn_epsilon", 0),
    ("segment_length", 0),
    ("segment_length", -128),
    ("window", 0),
    ("key_dim", 0),
    ("cost_dim", True),
    ("hidden_size", "64"),
    ("trained_ratios", []),
    ("trained_ratios", [0]),
    ("standardize_layers", "yes"),
    ("locality_weight", float("inf")),
    ("max_slot_norm", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_HEAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_HEAD_VALUES])
def test_head_config_values_are_checked(tmp_path, head, field, value):
    with pytest.raises(InvalidInputError, match=field):
        ComprExITConfig(**{**head.config.to_dict(), field: value})
    saved = head.save_pretrained(tmp_path / "head")
    metadata = json.loads((saved / "config.json").read_text())
    metadata["config"][field] = value
    (saved / "config.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=f"invalid ComprExIT head config: {field}"):
        ComprExITHead.from_pretrained(saved)


def test_other_configs_are_checked():
    for config_class, values in [
        (COMIConfig, {"hidden_size": 64, "num_hidden_states": 3, "max_ratio": 0}),
        (COMIConfig, {"hidden_size": 64, "num_hidden_states": 3, "layer": 1.5}),
        (COMIConfig, {"hidden_size": 64, "num_hidden_states": 3, "trained_ratios": [200]}),
        (MeanPoolConfig, {"hidden_size": 64, "num_hidden_states": 3, "segment_length": 0}),
        (MeanPoolConfig, {"hidden_size": 64, "num_hidden_states": 3, "ratio": 0}),
        (SoftPromptConfig, {"num_tokens": 0, "hidden_size": 64}),
    ]:
        with pytest.raises(InvalidInputError):
            config_class(**values)


@pytest.mark.parametrize(
    "payload", ["[]", '"a string"', "3", '{"format_version": 1, "kind": "comprexit-head", "config": []}']
)
def test_a_config_json_that_is_not_an_object_is_a_checkpoint_error(tmp_path, head, payload):
    saved = head.save_pretrained(tmp_path / "head")
    (saved / "config.json").write_text(payload)
    with pytest.raises(CheckpointError):
        ComprExITHead.from_pretrained(saved)


def test_a_pipeline_json_that_is_not_an_object_is_a_checkpoint_error(tmp_path, tiny_backbone, embedder, head):
    untrained_pipeline(tmp_path / "rag", tiny_backbone, embedder, head=head)
    (tmp_path / "rag" / PIPELINE_FILE).write_text("[]")
    with pytest.raises(CheckpointError, match="holds a JSON list"):
        load(tmp_path / "rag", tiny_backbone, embedder)


# ---------------------------------------------------------------------------------------------
# 6. Paths stored in index files stay inside the index directory.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/shard-1-aaaaaaaaaaaa.safetensors"]
)
def test_manifest_shard_names_cannot_leave_the_store(tmp_path, name):
    store = SlotStore(tmp_path / "slots", "fingerprint")
    store.put_many(["a"], [torch.ones(2, 4)], [3])
    record = json.loads(store.manifest_path.read_text().splitlines()[0])
    outside = store.path.parent / "outside.safetensors"
    outside.write_bytes((store.path / record["shard"]).read_bytes())
    record.update(shard=name, entries=[{"key": "b", "shape": [2, 4], "tokens": 3}])
    with open(store.manifest_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    reopened = SlotStore(tmp_path / "slots", "fingerprint")
    assert "b" not in reopened and reopened.get("b") is None
    problems = reopened.verify()
    assert any("not a shard file of this directory" in problem for problem in problems)


@pytest.mark.parametrize("index_file", ["/etc/passwd", "../retriever-elsewhere/index-0123456789abcdef.faiss", 7])
def test_retriever_index_file_cannot_leave_the_directory(tmp_path, embedder, index_file):
    retriever = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    retriever.add(["One passage."])
    state_path = retriever.save(tmp_path / "retriever")
    state = json.loads(state_path.read_text())
    state["index_file"] = index_file
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="not a file of its own directory"):
        DenseRetriever.load(tmp_path / "retriever", embedder)


# ---------------------------------------------------------------------------------------------
# 7. More ordinary mistakes get typed errors.
# ---------------------------------------------------------------------------------------------


def test_index_out_pointing_at_a_file_or_under_one_exits_2_with_a_message(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "A passage."}) + "\n", encoding="utf-8")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for out, message in ((a_file, "is a file, not a directory"), (a_file / "rag", "lies under")):
        assert cli(["index", str(corpus), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("entry", [None, "a string", 3, ["a", "list"]])
def test_retriever_metadata_entries_that_are_not_objects_are_checkpoint_errors(tmp_path, embedder, entry):
    retriever = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    retriever.add(["One passage."])
    state_path = retriever.save(tmp_path / "retriever")
    state = json.loads(state_path.read_text())
    state["metadata"] = [entry]
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"metadata\[0\] must be a JSON object"):
        DenseRetriever.load(tmp_path / "retriever", embedder)


@pytest.mark.parametrize("raw", [b"not a torch file", b"\x80\x04K\x01.", b"PK\x03\x04" + bytes(40)])
def test_undecodable_prompt_embeds_are_invalid_input(raw):
    with pytest.raises(InvalidInputError, match=r"not a tensor saved with torch\.save"):
        decode_prompt_embeds(base64.b64encode(raw))


# ---------------------------------------------------------------------------------------------
# 8. Folders index their JSON files; long records are cut into passages.
# ---------------------------------------------------------------------------------------------


def test_a_folder_indexes_its_json_and_jsonl_files_with_ids_per_file(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("Cats purr when content.", encoding="utf-8")
    (folder / "a.jsonl").write_text(json.dumps({"id": "0", "title": "A", "text": "Alpha."}) + "\n", encoding="utf-8")
    (folder / "sub" / "b.json").write_text(json.dumps([{"id": "0", "title": "B", "text": "Beta."}]), encoding="utf-8")
    passages = read_corpus(folder)
    assert sorted((p.id, p.text) for p in passages) == [
        ("a.jsonl:0", "Alpha."),
        ("notes.txt#0", "Cats purr when content."),
        ("sub/b.json:0", "Beta."),
    ]


def test_a_long_jsonl_record_is_cut_into_passages(tmp_path):
    words = [f"w{i}" for i in range(1000)]
    corpus = tmp_path / "long.jsonl"
    records = [{"id": "big", "title": "Big", "text": " ".join(words)}, {"title": "Small", "text": "Short one."}]
    corpus.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    passages = read_corpus(corpus, max_words=300)
    assert [p.id for p in passages] == ["big#0", "big#1", "big#2", "big#3", ""]
    assert all(len(p.text.split()) <= 300 and p.title == "Big" for p in passages[:4])
    assert " ".join(p.text for p in passages[:4]).split() == words  # no word dropped
    assert passages[4].text == "Short one."
