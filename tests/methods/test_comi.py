"""Tests of the COMI baseline: MIG grouping and merging, the merger, the compressor and its encoder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from comprexit_rag.backbone import Backbone
from comprexit_rag.errors import BackboneMismatchError, CheckpointError, DefaultModelUnavailableError, InvalidInputError
from comprexit_rag.methods.comi import (
    DEFAULT_MERGER,
    COMICompressor,
    COMIConfig,
    COMIMerger,
    allocate_group_sizes,
    group_index,
    group_mig,
    merge_weights,
    mig_merge,
    near_equal_sizes,
    num_groups,
)
from comprexit_rag.methods.segments import split_into_segments
from comprexit_rag.soft_context import SoftContext
from comprexit_rag.testing import tiny_llama
from comprexit_rag.training.encoders import COMIContextEncoder
from comprexit_rag.training.examples import TrainExample

PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889 as the centerpiece of the 1889 World's Fair."
)
QUESTION = "Who designed the Eiffel Tower?"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from comprexit_rag.default_model import default_backbone_dir

    try:
        return AutoTokenizer.from_pretrained(default_backbone_dir())
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default tokenizer unavailable: {error}")


def tiny_backbone(tokenizer, seed: int = 0, layers: int = 2) -> Backbone:
    return tiny_llama(tokenizer, seed=seed, layers=layers, max_positions=1024)


@pytest.fixture(scope="module")
def backbone(tokenizer) -> Backbone:
    return tiny_backbone(tokenizer)


@pytest.fixture(scope="module")
def compressor(backbone) -> COMICompressor:
    torch.manual_seed(1)
    merger = COMIMerger.for_backbone(backbone, layer=1, segment_length=32)
    return COMICompressor(backbone, merger)


# ---------------------------------------------------------------------------------------------
# allocate_group_sizes
# ---------------------------------------------------------------------------------------------

mig_values = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, width=32)


@st.composite
def allocation_case(draw):
    n = draw(st.integers(min_value=1, max_value=600))
    ratio = draw(st.integers(min_value=1, max_value=64))
    groups = num_groups(n, ratio)
    mig = draw(st.lists(mig_values, min_size=groups, max_size=groups))
    return torch.tensor(mig, dtype=torch.float32), n


@settings(max_examples=200, deadline=None, database=None)
@given(allocation_case())
def test_allocation_sizes_are_positive_sum_to_n_and_keep_g(case):
    mig, n = case
    sizes = allocate_group_sizes(mig, n)
    assert sizes.dtype == torch.long
    assert sizes.shape == mig.shape
    assert int(sizes.min()) >= 1
    assert int(sizes.sum()) == n


@settings(max_examples=200, deadline=None, database=None)
@given(allocation_case())
def test_allocation_is_monotone_higher_mig_fewer_tokens(case):
    mig, n = case
    sizes = allocate_group_sizes(mig, n)
    order = torch.argsort(mig, stable=True)  # increasing MIG
    assert bool((sizes[order][1:] <= sizes[order][:-1]).all())


def _remainder_gap(mig: torch.Tensor, n: int) -> float:
    """Smallest gap between the fractional parts of the unpinned shares (0 when rounding can tie)."""
    share = torch.softmax(-mig.double(), dim=0) * n
    if bool((share < 1).any()) or mig.numel() < 2:
        return 1.0 if mig.numel() < 2 else 0.0
    fraction = torch.sort(share - share.floor()).values
    return float((fraction[1:] - fraction[:-1]).min())


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(allocation_case(), st.randoms(use_true_random=False))
def test_allocation_is_permutation_equivariant(case, rng):
    mig, n = case
    permutation = list(range(mig.numel()))
    rng.shuffle(permutation)
    permutation = torch.tensor(permutation, dtype=torch.long)
    sizes = allocate_group_sizes(mig, n)
    permuted = allocate_group_sizes(mig[permutation], n)
    # Rounding ties may move one token between tied groups, never more.
    assert int((permuted - sizes[permutation]).abs().max()) <= 1
    assert int(permuted.sum()) == n


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(allocation_case(), st.randoms(use_true_random=False))
def test_allocation_is_exactly_equivariant_without_rounding_ties(case, rng):
    mig, n = case
    assume(_remainder_gap(mig, n) > 1e-6)
    permutation = list(range(mig.numel()))
    rng.shuffle(permutation)
    permutation = torch.tensor(permutation, dtype=torch.long)
    assert torch.equal(allocate_group_sizes(mig[permutation], n), allocate_group_sizes(mig, n)[permutation])


def test_allocation_follows_softmax_of_negative_mig():
    sizes = allocate_group_sizes(torch.tensor([0.0, 0.0, math.log(3.0)]), 70)
    # shares 3/7, 3/7, 1/7 of 70 tokens
    assert sizes.tolist() == [30, 30, 10]


def test_allocation_pins_tiny_groups_to_one_token():
    sizes = allocate_group_sizes(torch.tensor([10.0, 0.0, 0.0, 0.0]), 9)
    assert sizes.tolist() == [1, 3, 3, 2]  # the two leftover tokens go to the first tied groups


def test_allocation_rounding_ties_favour_the_lower_mig():
    sizes = allocate_group_sizes(torch.tensor([0.0, -1e-30, 0.0]), 4)
    assert sizes.tolist() == [1, 2, 1]


def test_allocation_rejects_too_few_tokens():
    with pytest.raises(InvalidInputError):
        allocate_group_sizes(torch.zeros(5), 4)


def test_groups_are_contiguous():
    torch.manual_seed(0)
    states, query = torch.randn(50, 16), torch.randn(16)
    _, sizes, _ = mig_merge(states, query, ratio=4)
    owner = group_index(sizes)
    assert bool((owner[1:] >= owner[:-1]).all()), "group ids must be non-decreasing along the tokens"
    assert torch.equal(torch.bincount(owner, minlength=sizes.numel()), sizes)


# ---------------------------------------------------------------------------------------------
# group_mig, merge_weights, mig_merge
# ---------------------------------------------------------------------------------------------


def _relevant_group_case() -> tuple[torch.Tensor, torch.Tensor]:
    """12 tokens, 3 groups of 4: group 0 points at the query, groups 1 and 2 repeat one direction."""
    hidden = 8
    query = torch.zeros(hidden)
    query[0] = 1.0
    states = torch.zeros(12, hidden)
    states[0:4, 0] = 1.0
    states[0:4, 1:4] = torch.eye(3)[torch.tensor([0, 1, 2, 0])] * 0.3
    states[4:12, 5] = 1.0
    states[4:12, 6] = torch.linspace(0.0, 0.2, 8)
    return states, query


def test_relevant_group_has_higher_mig_and_receives_fewer_tokens():
    states, query = _relevant_group_case()
    initial = near_equal_sizes(12, 3)
    mig = group_mig(states, query, initial)
    assert float(mig[0]) > float(mig[1]) and float(mig[0]) > float(mig[2])
    _, sizes, _ = mig_merge(states, query, ratio=4)
    assert int(sizes[0]) < int(sizes[1]) and int(sizes[0]) < int(sizes[2])
    assert int(sizes.sum()) == 12


def test_mig_is_relevance_minus_redundancy():
    query = torch.tensor([1.0, 0.0, 0.0])
    states = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mig = group_mig(states, query, torch.tensor([2, 2]))
    # group 0: relevance 1 (token 0), group 1: relevance 0 (token 2, first max); reps orthogonal.
    assert torch.allclose(mig, torch.tensor([1.0, 0.0]))
    single = group_mig(states, query, torch.tensor([4]))
    assert torch.allclose(single, torch.tensor([1.0]))  # no other group: no redundancy


@pytest.mark.parametrize("sizes", [[1, 4, 2, 5], [12], [3, 3, 3, 3], [1, 1, 10]])
def test_merge_weights_sum_to_one_within_each_group(sizes):
    torch.manual_seed(0)
    states, query = torch.randn(12, 16), torch.randn(16)
    group_sizes = torch.tensor(sizes)
    weights = merge_weights(states, query, group_sizes)
    totals = torch.zeros(len(sizes)).index_add(0, group_index(group_sizes), weights)
    assert torch.allclose(totals, torch.ones(len(sizes)), atol=1e-6)
    assert bool((weights > 0).all())
    for position, size in zip(torch.cumsum(group_sizes, 0) - group_sizes, sizes, strict=True):
        if size == 1:
            assert float(weights[position]) == 1.0


def test_merge_weights_prefer_relevant_non_redundant_tokens():
    query = torch.tensor([1.0, 0.0, 0.0])
    states = torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.05]])
    weights = merge_weights(states, query, torch.tensor([3]))
    assert int(weights.argmax()) == 0


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 128, 129, 512])
@pytest.mark.parametrize("ratio", [1, 4, 7, 32, 128])
def test_mig_merge_returns_ceil_n_over_m_vectors(n, ratio):
    torch.manual_seed(n)
    states, query = torch.randn(n, 8), torch.randn(8)
    merged, sizes, weights = mig_merge(states, query, ratio)
    assert merged.shape == (math.ceil(n / ratio), 8)
    assert merged.dtype == torch.float32
    assert int(sizes.sum()) == n and weights.shape == (n,)


def test_mig_merge_is_a_convex_combination_and_deterministic():
    torch.manual_seed(0)
    states, query = torch.randn(40, 8), torch.randn(8)
    merged, sizes, weights = mig_merge(states, query, 4)
    owner = group_index(sizes)
    expected = torch.zeros_like(merged).index_add(0, owner, weights[:, None] * states)
    assert torch.allclose(merged, expected)
    again = mig_merge(states, query, 4)
    assert torch.equal(again[0], merged) and torch.equal(again[1], sizes) and torch.equal(again[2], weights)


def test_mig_merge_of_no_tokens_is_empty():
    merged, sizes, weights = mig_merge(torch.zeros(0, 8), torch.randn(8), 4)
    assert merged.shape == (0, 8) and sizes.numel() == 0 and weights.numel() == 0


# ---------------------------------------------------------------------------------------------
# COMIConfig and COMIMerger
# ---------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    config = COMIConfig(hidden_size=64, num_hidden_states=3, layer=2, ratio=8)
    assert COMIConfig.from_dict(config.to_dict()) == config
    assert config.slots_for(1000, ratio=4) == 128 + 122  # 512 -> 128, 488 -> 122
    with pytest.raises(InvalidInputError):
        COMIConfig(hidden_size=64, num_hidden_states=3, layer=3)
    with pytest.raises(InvalidInputError):
        COMIConfig(hidden_size=64, num_hidden_states=3, layer=1, ratio=0)


def test_merger_forward_shapes_mask_and_projector_gradients(backbone):
    torch.manual_seed(0)
    merger = COMIMerger.for_backbone(backbone, layer=1)
    states = torch.randn(2, 20, 64)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, 1:18] = True  # 17 tokens -> 5 slots at ratio 4
    mask[1, 1:6] = True  # 5 tokens -> 2 slots
    slots, slot_mask = merger(states, mask, torch.randn(2, 64), ratio=4)
    assert slots.shape == (2, 5, 64) and slots.dtype == torch.float32
    assert slot_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    slots[slot_mask].pow(2).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in merger.projector.parameters())
    assert merger.num_parameters() == sum(p.numel() for p in merger.projector.parameters())


def test_default_layer_is_the_last_hidden_state(backbone):
    assert COMIMerger.for_backbone(backbone).config.layer == backbone.num_hidden_states - 1
    assert COMIConfig(hidden_size=8, num_hidden_states=31).layer == 30


# ---------------------------------------------------------------------------------------------
# COMICompressor
# ---------------------------------------------------------------------------------------------


def test_compress_gives_ceil_n_over_m_slots_per_segment(compressor, backbone):
    texts = [PASSAGE, "Short one.", PASSAGE + " " + PASSAGE]
    soft = compressor.compress(texts, query=QUESTION, ratio=4)
    assert isinstance(soft, SoftContext)
    lengths = [len(ids) for ids in backbone.tokenize(texts)]
    expected = [compressor.config.slots_for(n, 4) for n in lengths]
    assert soft.slot_counts.tolist() == expected
    assert soft.token_counts.tolist() == lengths
    assert soft.hidden_size == backbone.hidden_size
    assert torch.isfinite(soft.embeddings()).all()


def test_compress_is_deterministic_and_query_dependent(compressor):
    first = compressor.compress([PASSAGE], query=QUESTION)
    second = compressor.compress([PASSAGE], query=QUESTION)
    assert torch.equal(first.slots, second.slots)
    other = compressor.compress([PASSAGE], query="When was the tower built?")
    assert not torch.equal(first.slots, other.slots)


def test_compress_accepts_one_query_per_passage(compressor):
    texts = [PASSAGE, "Gustave Eiffel was a French civil engineer."]
    per_passage = compressor.compress(texts, query=[QUESTION, "Who was Gustave Eiffel?"])
    alone = compressor.compress(texts[1:], query="Who was Gustave Eiffel?")
    assert torch.allclose(per_passage.passage(1), alone.passage(0), atol=1e-5)


def test_batching_does_not_change_slots(compressor):
    texts = [PASSAGE, "Gustave Eiffel was a French civil engineer.", PASSAGE[:80]]
    batched = compressor.compress(texts, query=QUESTION, batch_size=3)
    single = compressor.compress(texts, query=QUESTION, batch_size=1)
    for index in range(len(texts)):
        assert torch.allclose(batched.passage(index), single.passage(index), atol=1e-4)


@pytest.mark.parametrize("query", [None, "", "   ", ["only one"], [QUESTION, ""], 3])
def test_missing_or_bad_query_is_rejected(compressor, query):
    with pytest.raises(InvalidInputError, match="query"):
        compressor.compress([PASSAGE, PASSAGE], query=query)


def test_missing_query_message_says_comi_is_query_aware(compressor):
    with pytest.raises(InvalidInputError, match="query-aware"):
        compressor.compress(PASSAGE)


@pytest.mark.parametrize("ratio", [0, 129, 2.5, True])
def test_bad_ratio_is_rejected(compressor, ratio):
    with pytest.raises(InvalidInputError):
        compressor.compress(PASSAGE, query=QUESTION, ratio=ratio)


def test_ratio_32_is_allowed(compressor, backbone):
    soft = compressor.compress(PASSAGE, query=QUESTION, ratio=32)
    assert soft.slot_counts.tolist() == [compressor.config.slots_for(len(backbone.tokenize([PASSAGE])[0]), 32)]


def test_compress_token_ids_matches_compress(compressor, backbone):
    ids = backbone.tokenize([PASSAGE])
    assert torch.equal(
        compressor.compress_token_ids(ids, QUESTION).slots, compressor.compress(PASSAGE, query=QUESTION).slots
    )


def test_save_load_gives_identical_outputs(compressor, backbone, tmp_path):
    compressor.merger.save_pretrained(tmp_path / "comi")
    loaded = COMIMerger.from_pretrained(tmp_path / "comi")
    assert loaded.config == compressor.merger.config
    reloaded = COMICompressor(backbone, loaded)
    assert torch.equal(
        reloaded.compress(PASSAGE, query=QUESTION).slots, compressor.compress(PASSAGE, query=QUESTION).slots
    )
    assert reloaded.fingerprint == compressor.fingerprint


def test_missing_default_merger_raises_checkpoint_error(monkeypatch, tmp_path):
    # A checkout without the shipped merger (e.g. a stripped wheel).
    monkeypatch.setattr(COMIMerger, "default_checkpoint", tmp_path / "comi-smollm2-135m")
    with pytest.raises(CheckpointError, match="comprexit-rag train"):
        COMIMerger.from_pretrained()


def test_shipped_default_merger_loads_for_the_default_backbone():
    merger = COMIMerger.from_pretrained()
    assert DEFAULT_MERGER.is_dir()
    assert merger.fingerprint.hidden_size == merger.config.hidden_size


def test_merger_for_another_backbone_is_refused(tokenizer, compressor):
    other = tiny_backbone(tokenizer, layers=3)
    with pytest.raises(BackboneMismatchError):
        COMICompressor(other, compressor.merger)


# ---------------------------------------------------------------------------------------------
# COMIContextEncoder
# ---------------------------------------------------------------------------------------------


def test_context_encoder_concatenates_passages_and_trains_the_projector(backbone):
    torch.manual_seed(0)
    merger = COMIMerger.for_backbone(backbone, layer=1, segment_length=32)
    encoder = COMIContextEncoder(backbone, merger)
    assert encoder.name == "comi" and encoder.trainable is merger
    passages = backbone.tokenize([PASSAGE, "Gustave Eiffel was a French civil engineer."])
    batch = [
        TrainExample(passage_ids=passages, question=QUESTION, target_ids=[1, 2]),
        TrainExample(passage_ids=passages[:1], question="", target_ids=[3]),  # pretraining: no question
    ]
    outputs = encoder.encode(batch, ratio=4)
    assert [o.shape[0] for o in outputs] == [
        sum(merger.config.slots_for(len(p), 4) for p in passages),
        merger.config.slots_for(len(passages[0]), 4),
    ]
    assert all(o.shape[1] == 64 and o.requires_grad for o in outputs)
    sum(o.pow(2).sum() for o in outputs).backward()
    assert all(p.grad is not None for p in merger.projector.parameters())
    assert not any(p.requires_grad for p in backbone.model.parameters())

    compressor = COMICompressor(backbone, merger)
    expected = compressor.compress([PASSAGE, "Gustave Eiffel was a French civil engineer."], query=QUESTION)
    assert torch.allclose(outputs[0].detach(), expected.embeddings(), atol=1e-5)


def test_context_encoder_reads_a_batch_in_passes_of_many_pairs_with_the_same_slots(backbone, monkeypatch):
    torch.manual_seed(0)
    merger = COMIMerger.for_backbone(backbone, layer=1, segment_length=32)
    passages = backbone.tokenize([PASSAGE, "Gustave Eiffel was a French civil engineer.", "Paris is in France."])
    batch = [TrainExample(passage_ids=passages, question=QUESTION, target_ids=[1]) for _ in range(6)]
    passes = []
    reader = backbone.hidden_states
    monkeypatch.setattr(backbone, "hidden_states", lambda ids, mask: passes.append(len(ids)) or reader(ids, mask))
    wide = COMIContextEncoder(backbone, merger)
    assert wide.batch_size == (1 << 16) // 32  # as many tokens a pass as the slot heads' training passes
    outputs = wide.encode(batch, ratio=4)
    pairs = sum(len(split_into_segments(example.passage_ids, 32)) for example in batch)
    assert passes == [pairs]  # one pass for the whole batch
    passes.clear()
    narrow = COMIContextEncoder(backbone, merger, batch_size=1).encode(batch, ratio=4)
    assert passes == [1] * pairs
    for got, expected in zip(outputs, narrow, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The real default backbone
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_backbone_compresses_a_passage_with_a_query(tmp_path):
    try:
        real = Backbone.from_pretrained(device="cpu")
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default backbone unavailable: {error}")
    merger = COMIMerger.for_backbone(real)
    assert merger.config.layer == real.num_hidden_states - 1 == 30
    compressor = COMICompressor(real, merger)
    soft = compressor.compress([PASSAGE], query=QUESTION, ratio=4)
    tokens = len(real.tokenize([PASSAGE])[0])
    assert soft.slots.shape == (1, math.ceil(tokens / 4), real.hidden_size)
    assert torch.isfinite(soft.slots).all()
