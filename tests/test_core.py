"""Core library: transport, windows, depth-wise equivalence, compression, checkpoints, reader."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch

from comprexit_rag import (
    BackboneMismatchError,
    CheckpointError,
    ComprExITCompressor,
    ComprExITConfig,
    ComprExITHead,
    InvalidInputError,
    Reader,
    SoftContext,
)
from comprexit_rag.methods.comprexit.sinkhorn import log_sinkhorn
from comprexit_rag.methods.comprexit.width import WidthTransmission, split_windows
from comprexit_rag.prompts import answer_end_token_id, stop_token_ids

PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed La dame de fer, it was constructed as the centrepiece "
    "of the 1889 World's Fair."
)


def random_masses(batch: int, n: int, m: int, generator: torch.Generator):
    source = torch.rand(batch, n, generator=generator) + 0.1
    source[0, n // 2 :] = 0  # padding rows
    target = torch.rand(batch, m, generator=generator) + 0.1
    target[1, m - 1] = 0  # an unused slot
    return source / source.sum(1, keepdim=True), target / target.sum(1, keepdim=True)


def test_sinkhorn_marginals():
    generator = torch.Generator().manual_seed(0)
    source, target = random_masses(3, 40, 10, generator)
    cost = torch.rand(3, 40, 10, generator=generator) * 2
    plan = log_sinkhorn(cost, source, target, epsilon=0.1, iterations=30)
    assert torch.allclose(plan.sum(dim=2), source, atol=1e-3)
    assert torch.allclose(plan.sum(dim=1), target, atol=1e-3)
    assert (plan[0, 20:] == 0).all() and (plan[1, :, 9] == 0).all()


def test_width_transport_marginals_match_masses():
    torch.manual_seed(0)
    width = WidthTransmission(32, 16, 1.0, 0.05, 0.1, 30)
    torch.nn.init.normal_(width.source_score.weight, std=0.5)  # a non-uniform learned source mass
    anchors = torch.randn(2, 300, 32)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 150:] = False
    windows = split_windows(anchors, mask, 128)
    _, slot_mask, plan = width(windows, ratio=4)
    tokens = windows.mask.sum(1, keepdim=True)
    scores = width.source_score(width.norm(windows.anchors)).squeeze(-1)
    source = 0.95 * torch.softmax(scores.masked_fill(~windows.mask, -math.inf), -1) + 0.05 * windows.mask / tokens
    target = slot_mask / slot_mask.sum(1, keepdim=True)
    assert torch.allclose(plan.sum(dim=2), source, atol=1e-3)
    assert torch.allclose(plan.sum(dim=1), target, atol=1e-3)


def test_windows_and_slot_counts():
    config = ComprExITConfig(hidden_size=8, num_hidden_states=3)
    assert config.slots_for(512, 4) == 128  # METHOD.md: a 512-token context -> 128 slots
    assert config.slots_for(50, 4) == 13  # shorter than one window
    assert config.slots_for(300, 4) == 32 + 32 + 11  # last window of 44 tokens
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, 1:301] = True
    mask[1, 1:51] = True
    windows = split_windows(torch.randn(2, 300, 8), mask, 128)
    assert windows.owner.tolist() == [0, 0, 0, 1]
    assert windows.mask.sum(1).tolist() == [128, 128, 43, 50]


def test_cheap_depth_form_equals_direct_form(tiny_backbone):
    head = ComprExITHead.for_backbone(tiny_backbone)
    torch.nn.init.normal_(head.depth.layer_logits, std=1.0)
    ids = torch.randint(0, 1000, (2, 20))
    states = tiny_backbone.hidden_states(ids, torch.ones_like(ids))
    fast, fast_weights = head.depth(states)
    direct, direct_weights = head.depth.forward_direct(states)
    assert torch.allclose(fast, direct, atol=1e-5)
    assert torch.allclose(fast_weights, direct_weights, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_compressor(tiny_backbone):
    torch.manual_seed(1)
    return ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))


def test_compress_shapes_short_and_long(tiny_compressor):
    long_text = " ".join(["Paris is the capital of France."] * 120)  # > 512 tokens: several segments
    soft = tiny_compressor.compress([PASSAGE, long_text], ratio=4)
    config = tiny_compressor.config
    tokens = soft.token_counts.tolist()
    assert tokens[1] > config.segment_length
    expected = []
    for count in tokens:
        full, rest = divmod(count, config.segment_length)
        expected.append(full * config.slots_for(config.segment_length, 4) + config.slots_for(rest, 4))
    assert soft.slot_counts.tolist() == expected
    assert soft.slots.shape == (2, max(expected), tiny_compressor.backbone.hidden_size)
    assert soft.ratio == pytest.approx(sum(tokens) / sum(expected))
    assert torch.isfinite(soft.slots).all()


def test_padding_does_not_change_slots(tiny_compressor):
    alone = tiny_compressor.compress([PASSAGE], ratio=4)
    with_longer = tiny_compressor.compress([PASSAGE, PASSAGE * 3], ratio=4)  # PASSAGE is padded in its batch
    assert torch.allclose(alone.passage(0), with_longer.passage(0), atol=1e-5)


def test_compress_is_deterministic(tiny_compressor):
    first = tiny_compressor.compress([PASSAGE], ratio=8)
    second = tiny_compressor.compress([PASSAGE], ratio=8)
    assert torch.equal(first.slots, second.slots)


def test_details_cover_every_token(tiny_compressor):
    soft = tiny_compressor.compress([PASSAGE], ratio=4, return_details=True)
    details = soft.details[0]
    assert details.layer_weights.shape == (len(details.token_ids), tiny_compressor.backbone.num_hidden_states)
    assert sum(plan.shape[0] for plan in details.transport_plans) == len(details.token_ids)
    assert sum(plan.shape[1] for plan in details.transport_plans) == soft.num_slots


def test_invalid_inputs(tiny_compressor):
    assert len(tiny_compressor.compress([])) == 0
    for bad in (["", "text"], ["   "], [None], [3]):
        with pytest.raises(InvalidInputError):
            tiny_compressor.compress(bad)
    for ratio in (0, -2, 2.5, 1000):
        with pytest.raises(InvalidInputError):
            tiny_compressor.compress([PASSAGE], ratio=ratio)


def test_save_load_gives_identical_slots(tiny_compressor, tmp_path):
    tiny_compressor.head.save_pretrained(tmp_path / "head")
    loaded = ComprExITHead.from_pretrained(tmp_path / "head")
    reloaded = ComprExITCompressor(tiny_compressor.backbone, loaded)
    original = tiny_compressor.compress([PASSAGE], ratio=4)
    assert torch.equal(original.slots, reloaded.compress([PASSAGE], ratio=4).slots)
    assert reloaded.fingerprint == tiny_compressor.fingerprint


def test_mismatched_backbone_is_refused(tiny_compressor, tmp_path):
    head = tiny_compressor.head
    other = dataclasses.replace(head.fingerprint, num_hidden_layers=head.fingerprint.num_hidden_layers + 1)
    foreign = ComprExITHead(head.config, other)
    with pytest.raises(BackboneMismatchError, match="trained for backbone"):
        ComprExITCompressor(tiny_compressor.backbone, foreign)


def test_corrupt_checkpoint_is_a_clear_error(tiny_compressor, tmp_path):
    directory = tiny_compressor.head.save_pretrained(tmp_path / "head")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ComprExITHead.from_pretrained(directory)
    with pytest.raises(CheckpointError):
        ComprExITHead.from_pretrained(tmp_path / "missing")


def test_head_size_is_about_one_percent():
    config = ComprExITConfig(hidden_size=576, num_hidden_states=31)
    head = ComprExITHead(config, fingerprint=None)
    assert 1_500_000 < head.num_parameters() < 2_000_000  # ~1.3% of SmolLM2-135M


def test_reader_batches_and_streams_on_tiny_model(tiny_backbone, tiny_compressor):
    reader = Reader(tiny_backbone, max_new_tokens=5)
    soft = tiny_compressor.compress([PASSAGE])
    answers = reader.generate(["Who built it?", "Where is it?"], [soft, PASSAGE])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # Left padding must not change a sequence's answer.
    assert reader.generate("Who built it?", soft) == answers[0]
    assert "".join(reader.stream("Who built it?", soft)) == answers[0]
    bad = SoftContext.from_passages([torch.full((3, tiny_backbone.hidden_size), float("nan"))], [10])
    with pytest.raises(InvalidInputError, match="NaN"):
        reader.generate("Who?", bad)


def test_answers_end_at_the_templates_end_of_turn_whatever_eos_says(default_tokenizer):
    im_start, im_end = default_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert answer_end_token_id(default_tokenizer) == im_end
    # Conversions of the same GGUF disagree on EOS; the answer end and the stop set must not.
    renamed = copy.deepcopy(default_tokenizer)
    renamed.eos_token = "<|im_start|>"
    assert answer_end_token_id(renamed) == im_end
    assert {im_start, im_end} <= stop_token_ids(renamed) == stop_token_ids(default_tokenizer)
    plain = copy.deepcopy(default_tokenizer)
    plain.chat_template = None
    assert answer_end_token_id(plain) == plain.eos_token_id


def test_decoded_answer_ends_at_a_new_turn(tiny_backbone):
    reader = Reader(tiny_backbone)
    tokens = tiny_backbone.tokenizer(" New York City", add_special_tokens=False)["input_ids"]
    turn = tiny_backbone.tokenizer.convert_tokens_to_ids(["<|im_start|>", "user"])
    assert reader._decode([*tokens, *turn, *tokens]) == "New York City"


def test_prompt_prefix_cache_changes_no_logits_and_is_never_mutated(tiny_backbone, tiny_compressor):
    reader = Reader(tiny_backbone)
    for context in (tiny_compressor.compress([PASSAGE]), PASSAGE, None):
        batch = reader.build_inputs(["Who built it?"], [context])
        with torch.no_grad():
            cached = reader._prefill(batch).logits
            full = reader._prefill(dataclasses.replace(batch, prompt_prefix=None)).logits
        assert len(batch.prompt_prefix) > 0
        torch.testing.assert_close(cached[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)
        _, kv = reader._prefix_cache
        assert kv.get_seq_length() == len(batch.prompt_prefix)  # decoding extended a copy, not the cache
    assert reader.generate("Who built it?", PASSAGE) == reader.generate(["Who built it?", "Why?"], [PASSAGE] * 2)[0]


def test_prefill_projects_only_the_last_position_and_changes_no_answer(tiny_backbone, tiny_compressor):
    reader = Reader(tiny_backbone)
    contexts = [tiny_compressor.compress([PASSAGE]), PASSAGE]
    batch = reader.build_inputs(["Who built it?", "When?"], contexts)
    with torch.no_grad():
        last = reader._prefill(batch).logits
        every = Reader(tiny_backbone)
        every._last_logits = {}
        full = every._prefill(batch).logits
    assert last.shape[1] == 1 and full.shape[1] == batch.inputs_embeds.shape[1]
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)
    questions = ["Who built it?", "When?"]
    assert reader.generate(questions, contexts) == every.generate(questions, contexts)


@pytest.mark.slow
def test_prompt_prefix_cache_gives_the_same_answers_on_smollm2(real_backbone):
    soft = ComprExITCompressor.from_pretrained(backbone=real_backbone).compress([PASSAGE])
    reader = Reader(real_backbone)  # after loading the head: it reads through the head's reader adapter
    for question in ("Who is the Eiffel Tower named after?", "When was the tower built?"):
        for context in (soft, PASSAGE):
            batch = reader.build_inputs([question], [context])
            uncached = dataclasses.replace(batch, prompt_prefix=None)
            assert [int(t) for t in reader._greedy(batch, 20)] == [int(t) for t in reader._greedy(uncached, 20)]


@pytest.mark.slow
def test_shipped_head_answer_stops_after_the_answer(real_backbone):
    compressor = ComprExITCompressor.from_pretrained(backbone=real_backbone)
    answer = Reader(real_backbone).generate("Who is the Eiffel Tower named after?", compressor.compress([PASSAGE]))
    assert answer and "\n" not in answer and "user" not in answer


@pytest.mark.slow
def test_real_smollm2_reads_slots_and_text(real_backbone):
    head = ComprExITHead.for_backbone(real_backbone)
    compressor = ComprExITCompressor(real_backbone, head)
    soft = compressor.compress([PASSAGE], ratio=4)
    assert soft.slots.shape[-1] == 576
    reader = Reader(real_backbone, max_new_tokens=12, adapter=None)  # an untrained head: the frozen reader
    from_slots = reader.generate("Who is the Eiffel Tower named after?", soft)
    from_text = reader.generate("Who is the Eiffel Tower named after?", PASSAGE)
    assert isinstance(from_slots, str) and from_slots
    assert "eiffel" in from_text.lower()


def test_kv_cache_is_passed_and_read_under_the_installed_transformers_name(tiny_backbone):
    from transformers import Cache

    from comprexit_rag.backbone import cache_keyword, returned_cache

    model = tiny_backbone.model
    ids = torch.tensor([[tiny_backbone.bos_token_id, 5, 6]], device=tiny_backbone.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # neither name may be a deprecated one
        cache = returned_cache(model(input_ids=ids, use_cache=True))
        assert isinstance(cache, Cache) and cache.get_seq_length() == 3
        step = model(input_ids=ids[:, -1:], use_cache=True, **{cache_keyword(model): cache})
    assert returned_cache(step).get_seq_length() == 4
