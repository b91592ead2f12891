"""Tests of comprexit_rag.scale: vLLM prompt-embedding inputs and corpus compression on Ray Data.

The vLLM tests need neither vLLM nor a network: payloads are decoded exactly as vLLM's
OpenAI server decodes them and the HTTP client runs over a fake transport. The Ray test starts
a local 2-CPU Ray cluster (skipped when ``ray[data]`` is not installed, except under
``COMPREXIT_REQUIRE_RAY=1``, set by ``.ci/run``, where it fails) and is marked ``slow``.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import base64
import io
import json
import sys
import urllib.request

import pytest
import torch

from comprexit_rag import ComprExITCompressor, ComprExITHead, QAPrompt, Reader, SoftContext
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.scale import (
    VLLMSlotClient,
    compress_corpus_with_ray,
    decode_prompt_embeds,
    encode_prompt_embeds,
    prompt_embeds,
    slot_store_fingerprint,
    to_embeds_prompt,
)
from comprexit_rag.slots import content_key

QUESTION = "Who discovered penicillin?"


@pytest.fixture(scope="module")
def head(tiny_backbone) -> ComprExITHead:
    torch.manual_seed(1)
    return ComprExITHead.for_backbone(tiny_backbone)


@pytest.fixture(scope="module")
def compressor(tiny_backbone, head) -> ComprExITCompressor:
    return ComprExITCompressor(tiny_backbone, head)


@pytest.fixture(scope="module")
def soft(compressor) -> SoftContext:
    return compressor.compress(
        ["Penicillin was discovered in 1928 by Alexander Fleming.", "Lake Baikal is the deepest lake."], ratio=4
    )


def server_decode(payload: str) -> torch.Tensor:
    """vLLM's ``_load_and_validate_embed`` (OpenAI server, /v1/completions), verbatim in substance."""
    tensor = torch.load(
        io.BytesIO(base64.b64decode(payload, validate=True)), weights_only=True, map_location=torch.device("cpu")
    )
    assert isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.float32, torch.bfloat16, torch.float16)
    tensor = tensor.to_dense()
    if tensor.dim() > 2:
        tensor = tensor.squeeze(0)
        assert tensor.dim() == 2
    return tensor


# --------------------------------------------------------------------------------------------- vLLM


def test_prompt_embeds_follow_the_reader_layout(tiny_backbone, soft):
    before, after = QAPrompt().pieces(tiny_backbone.tokenizer, QUESTION)
    embeds = prompt_embeds(tiny_backbone, QUESTION, soft)

    assert embeds.shape == (len(before) + soft.num_slots + len(after), tiny_backbone.hidden_size)
    assert embeds.dtype == tiny_backbone.dtype and embeds.device.type == "cpu" and embeds.is_contiguous()
    with torch.no_grad():
        assert torch.equal(embeds[: len(before)], tiny_backbone.embed(torch.tensor(before)))
        assert torch.equal(embeds[len(before) : len(before) + soft.num_slots], soft.embeddings())
        assert torch.equal(embeds[len(before) + soft.num_slots :], tiny_backbone.embed(torch.tensor(after)))
    reader_row = Reader(tiny_backbone).build_inputs([QUESTION], [soft]).inputs_embeds[0]
    assert torch.equal(embeds, reader_row)
    # An [S, H] tensor of slots gives the same prompt as the SoftContext holding them.
    assert torch.equal(prompt_embeds(tiny_backbone, QUESTION, soft.embeddings()), embeds)
    half = prompt_embeds(tiny_backbone, QUESTION, soft, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, embeds.to(torch.bfloat16))


def test_to_embeds_prompt_is_a_vllm_embeds_prompt(tiny_backbone, soft):
    prompt = to_embeds_prompt(tiny_backbone, QUESTION, soft, dtype=torch.bfloat16)
    assert set(prompt) == {"prompt_embeds"}
    assert prompt["prompt_embeds"].dim() == 2 and prompt["prompt_embeds"].dtype == torch.bfloat16
    assert torch.equal(prompt["prompt_embeds"], prompt_embeds(tiny_backbone, QUESTION, soft, dtype=torch.bfloat16))


def test_prompt_embeds_reject_slots_of_another_backbone(tiny_backbone):
    with pytest.raises(InvalidInputError, match="hidden size"):
        prompt_embeds(tiny_backbone, QUESTION, torch.zeros(3, tiny_backbone.hidden_size + 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_payload_round_trips_through_the_server_decoder(tiny_backbone, soft, dtype):
    embeds = prompt_embeds(tiny_backbone, QUESTION, soft, dtype=dtype)
    payload = encode_prompt_embeds(embeds)
    assert isinstance(payload, str)
    for decoded in (server_decode(payload), decode_prompt_embeds(payload)):
        assert decoded.dtype == dtype and decoded.shape == embeds.shape
        assert torch.equal(decoded, embeds)


def test_payload_of_a_view_holds_only_the_view():
    big = torch.randn(1000, 64)
    view = big[10:20]
    payload = encode_prompt_embeds(view)
    assert torch.equal(server_decode(payload), view)
    assert len(payload) < len(encode_prompt_embeds(big)) / 20


def test_payload_checks_match_the_server():
    with pytest.raises(InvalidInputError, match="2-D"):
        encode_prompt_embeds(torch.zeros(4))
    with pytest.raises(InvalidInputError, match="2-D"):
        encode_prompt_embeds(torch.zeros(1, 4, 8))
    with pytest.raises(InvalidInputError, match="float32, bfloat16 or float16"):
        encode_prompt_embeds(torch.zeros(4, 8, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="base64"):
        decode_prompt_embeds("not base64!")
    buffer = io.BytesIO()
    torch.save(torch.zeros(4, 8, dtype=torch.int64), buffer)
    with pytest.raises(InvalidInputError, match="float32/bfloat16/float16"):
        decode_prompt_embeds(base64.b64encode(buffer.getvalue()))
    batched = torch.randn(1, 5, 8)  # the server squeezes a leading batch dimension
    buffer = io.BytesIO()
    torch.save(batched, buffer)
    assert torch.equal(decode_prompt_embeds(base64.b64encode(buffer.getvalue()).decode()), batched[0])


class FakeTransport:
    """Records requests and answers with canned completion choices."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls: list[tuple[str, dict, dict, float]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> bytes:
        self.calls.append((url, json.loads(body), headers, timeout))
        choices = [{"index": i, "text": text, "finish_reason": "stop"} for i, text in enumerate(self.texts)]
        return json.dumps({"object": "text_completion", "choices": choices[::-1]}).encode()


def test_client_posts_prompt_embeds_to_completions(tiny_backbone, soft):
    transport = FakeTransport([" Alexander Fleming\n"])
    client = VLLMSlotClient("http://gpu-host:8000/", "tiny-llama", transport=transport, timeout=5)

    answer = client.answer(tiny_backbone, QUESTION, soft, dtype=torch.bfloat16, max_tokens=8)

    assert answer == "Alexander Fleming"
    [(url, body, headers, timeout)] = transport.calls
    assert url == "http://gpu-host:8000/v1/completions" and timeout == 5
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    assert body.keys() == {"model", "prompt_embeds", "max_tokens", "temperature", "stop_token_ids"}  # no "prompt"
    assert body["model"] == "tiny-llama" and body["max_tokens"] == 8 and body["temperature"] == 0
    # The reader's stop tokens, whatever the server takes for EOS: the turn tokens of the chat template.
    im_start, im_end = tiny_backbone.tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert {im_start, im_end} <= set(body["stop_token_ids"]) == Reader(tiny_backbone).stop_token_ids
    sent = server_decode(body["prompt_embeds"])
    assert sent.dtype == torch.bfloat16
    assert torch.equal(sent, prompt_embeds(tiny_backbone, QUESTION, soft, dtype=torch.bfloat16))


def test_client_batches_prompts_and_orders_choices(tiny_backbone, soft):
    transport = FakeTransport(["first", "second"])
    client = VLLMSlotClient("http://gpu-host:8000/v1", "tiny-llama", transport=transport)
    one = prompt_embeds(tiny_backbone, QUESTION, soft.select([0]))
    two = prompt_embeds(tiny_backbone, "Which lake is deepest?", soft.select([1]))

    assert client.complete_many([one, two], max_tokens=4, stop=["\n"]) == ["first", "second"]
    [(url, body, _, _)] = transport.calls
    assert url == "http://gpu-host:8000/v1/completions" and body["stop"] == ["\n"]
    assert [server_decode(item).shape for item in body["prompt_embeds"]] == [one.shape, two.shape]
    assert torch.equal(server_decode(body["prompt_embeds"][1]), two)


def test_default_transport_is_a_urllib_post(monkeypatch):
    seen = {}

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        seen.update(request=request, timeout=timeout)
        return Response(json.dumps({"choices": [{"index": 0, "text": "ok"}]}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    client = VLLMSlotClient("http://gpu-host:8000", "m", api_key="secret", timeout=7)
    embeds = torch.randn(6, 8, dtype=torch.bfloat16)

    assert client.complete(embeds) == "ok"
    request = seen["request"]
    assert request.full_url == "http://gpu-host:8000/v1/completions" and request.get_method() == "POST"
    assert request.get_header("Authorization") == "Bearer secret" and seen["timeout"] == 7
    assert torch.equal(server_decode(json.loads(request.data)["prompt_embeds"]), embeds)


# --------------------------------------------------------------------------------------------- Ray


def test_missing_ray_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=r'pip install "ray\[data\]"'):
        compress_corpus_with_ray(["a passage"], tmp_path)


def corpus() -> list[str]:
    """1,000 short passages, two long ones (several windows, two segments) and 40 repeats."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    texts = [f"Passage {i}: " + " ".join(words[(i + j) % len(words)] for j in range(3 + i % 17)) for i in range(1000)]
    texts += [" ".join(words * 25), " ".join(words * 60)]
    return texts + texts[:40]


@pytest.fixture(scope="module")
def embedder():
    from sentence_transformers import SentenceTransformer

    from comprexit_rag.errors import DefaultModelUnavailableError
    from comprexit_rag.retrieval import default_embedder_path

    try:
        return SentenceTransformer(str(default_embedder_path()), device="cpu")
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default embedder unavailable: {error}")


@pytest.fixture(scope="module")
def ray_cluster():
    if os.environ.get("COMPREXIT_REQUIRE_RAY"):  # CI (.ci/run): a missing ray fails instead of skipping
        import ray
        import ray.data
    else:
        ray = pytest.importorskip("ray")
        pytest.importorskip("ray.data")
    # A bounded local cluster: 2 CPUs, no dashboard, a small object store.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_compression_equals_single_process_and_feeds_the_pipeline(
    ray_cluster, tmp_path, tiny_backbone, head, compressor, embedder
):
    from comprexit_rag.rag import RAGPipeline
    from comprexit_rag.rag.directory import SLOTS_DIR
    from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever

    # Paths the actors rebuild the exact models from.
    backbone_dir, head_dir = tmp_path / "backbone", tmp_path / "head"
    tiny_backbone.model.save_pretrained(backbone_dir)
    tiny_backbone.tokenizer.save_pretrained(backbone_dir)
    head.save_pretrained(head_dir)
    retriever = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    pipeline = RAGPipeline.build(tmp_path / "rag", backbone=tiny_backbone, head=head, retriever=retriever)
    texts = corpus()
    unique = list(dict.fromkeys(texts))
    assert len(unique) == 1002

    report = compress_corpus_with_ray(
        texts,
        pipeline.directory / SLOTS_DIR,
        backbone=backbone_dir,
        head=head_dir,
        ratio=4,
        batch_size=64,
        num_actors=2,
        shard_size=256,
    )

    assert report.fingerprint == pipeline.store.fingerprint == slot_store_fingerprint(compressor.fingerprint, 4)
    assert (report.passages, report.skipped, report.compressed, report.written) == (1002, 0, 1002, 1002)
    assert report.worker_seconds > 0
    print(f"\nray: {report.seconds:.1f} s wall, {report.passages_per_worker_second:.0f} passages per actor-second")

    # Every key exactly once in the manifest, nothing else.
    store = pipeline.store
    store.refresh()
    manifest = [json.loads(line) for line in store.manifest_path.read_text().splitlines()]
    keys = [entry["key"] for line in manifest if line["op"] == "shard" for entry in line["entries"]]
    assert len(keys) == len(set(keys)) == 1002 and set(keys) == {content_key(text) for text in unique}
    assert store.verify() == []

    # Equal to single-process compression within fp16 rounding.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a Ray worker; several threads crawl on a busy CPU
    try:
        reference = compressor.compress(unique, ratio=4, batch_size=64, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    stored = store.get_many([content_key(text) for text in unique])
    for index, (slots, text) in enumerate(zip(stored, unique, strict=True)):
        expected = reference.passage(index)
        assert slots.shape == expected.shape, text
        assert torch.equal(slots, slots.half().float())  # stored in fp16
        torch.testing.assert_close(slots, expected, rtol=2e-3, atol=1e-5)
        assert store.token_count(content_key(text)) == int(reference.token_counts[index])

    # Resuming with a list compresses nothing; a Dataset is compressed but only new keys are written.
    again = compress_corpus_with_ray(texts, pipeline.directory / SLOTS_DIR, backbone=backbone_dir, head=head_dir)
    assert (again.skipped, again.compressed, again.written) == (1002, 0, 0)
    fresh = ["A new passage about Ray actors.", "Another new passage about vLLM."]
    dataset = ray_cluster.data.from_items([{"text": text} for text in [*unique[:6], *fresh]])
    mixed = compress_corpus_with_ray(
        dataset, pipeline.directory / SLOTS_DIR, backbone=backbone_dir, head=head_dir, batch_size=4
    )
    assert (mixed.passages, mixed.compressed, mixed.written) == (8, 8, 2)
    print(f"resume: {again.seconds:.1f} s, dataset of 8: {mixed.seconds:.1f} s wall")
    store.refresh()
    assert len(store) == 1004

    # The pipeline reads the slots unchanged: indexing those passages compresses nothing.
    indexed = pipeline.index(unique[:8] + fresh)
    assert indexed.compressed == 0 and indexed.stored == 10
