"""The head's departures from METHOD.md: layer standardisation, the transport locality term, the slot-norm bound."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from comprexit_rag import BackboneMismatchError, CheckpointError, ComprExITConfig, ComprExITHead, InvalidInputError
from comprexit_rag.checkpoint import CONFIG_NAME
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import MULTI_RATIO_HEAD
from comprexit_rag.methods.comprexit.width import WidthTransmission, rotate_pairs, segment_offsets, split_windows
from comprexit_rag.methods.projector import bound_norm
from comprexit_rag.methods.segments import iter_batches, split_into_segments
from comprexit_rag.training.trainer import TrainConfig

TEXTS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Gustave Eiffel's company designed and built the tower from 1887 to 1889 for the World's Fair.",
    "Paris is the capital and most populous city of France, on the river Seine.",
]


def token_ids(backbone, texts=TEXTS) -> list[list[int]]:
    return [backbone.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def anchor_states(backbone, passages):
    """The hidden states of the tokens the head compresses, as the compressor lays them out: [L+1, N, H]."""
    batch = next(iter_batches(split_into_segments(passages, 512), 64, backbone.bos_token_id))
    states = backbone.hidden_states(batch.input_ids, batch.attention_mask)
    return torch.stack([state[batch.anchor_mask].float() for state in states]), states, batch.anchor_mask


@pytest.fixture
def standardised_head(tiny_backbone):
    torch.manual_seed(0)
    head = ComprExITHead.for_backbone(tiny_backbone, standardize_layers=True)
    head.calibrate(tiny_backbone, token_ids(tiny_backbone))
    return head


def test_calibration_measures_each_layers_statistics(tiny_backbone, standardised_head):
    tokens, _, _ = anchor_states(tiny_backbone, token_ids(tiny_backbone))
    depth = standardised_head.depth
    assert torch.allclose(depth.layer_shift, tokens.mean(dim=1), atol=1e-5)
    assert torch.allclose(depth.layer_scale, 1 / tokens.std(dim=1), rtol=1e-4)
    standardised = (tokens - depth.layer_shift[:, None]) * depth.layer_scale[:, None]
    assert standardised.mean(dim=1).abs().max() < 1e-4
    assert torch.allclose(standardised.std(dim=1), torch.ones(()), atol=1e-4)


def test_standardised_depth_fast_form_equals_direct_form(tiny_backbone, standardised_head):
    torch.nn.init.normal_(standardised_head.depth.layer_logits, std=1.0)
    _, states, _ = anchor_states(tiny_backbone, token_ids(tiny_backbone))
    fast, fast_weights = standardised_head.depth(states)
    direct, direct_weights = standardised_head.depth.forward_direct(states)
    assert torch.allclose(fast, direct, atol=1e-5)
    assert torch.allclose(fast_weights, direct_weights, atol=1e-6)


def test_uncalibrated_standardisation_is_the_identity(tiny_backbone):
    torch.manual_seed(0)
    raw = ComprExITHead.for_backbone(tiny_backbone)
    torch.manual_seed(0)
    standardised = ComprExITHead.for_backbone(tiny_backbone, standardize_layers=True)
    _, states, _ = anchor_states(tiny_backbone, token_ids(tiny_backbone))
    assert torch.allclose(raw.depth(states)[0], standardised.depth(states)[0], atol=1e-6)


def test_statistics_are_saved_and_restored(tiny_backbone, standardised_head, tmp_path):
    _, states, mask = anchor_states(tiny_backbone, token_ids(tiny_backbone))
    standardised_head.eval()
    before = standardised_head(states, mask, ratio=4).slots
    directory = standardised_head.save_pretrained(tmp_path / "head")
    loaded = ComprExITHead.from_pretrained(directory).eval()
    assert loaded.config.standardize_layers
    assert torch.equal(loaded.depth.layer_shift, standardised_head.depth.layer_shift)
    assert torch.equal(loaded(states, mask, ratio=4).slots, before)


def test_a_standardised_config_without_statistics_is_refused(tiny_backbone, tmp_path):
    directory = ComprExITHead.for_backbone(tiny_backbone).save_pretrained(tmp_path / "head")
    metadata = json.loads((directory / CONFIG_NAME).read_text())
    metadata["config"]["standardize_layers"] = True  # config edited by hand: the weights lack the statistics
    (directory / CONFIG_NAME).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="do not fit"):
        ComprExITHead.from_pretrained(directory)


def test_calibration_errors(tiny_backbone, real_backbone_fingerprint_head):
    with pytest.raises(InvalidInputError, match="nothing to calibrate"):
        ComprExITHead.for_backbone(tiny_backbone).calibrate(tiny_backbone, token_ids(tiny_backbone))
    with pytest.raises(BackboneMismatchError):
        real_backbone_fingerprint_head.calibrate(tiny_backbone, token_ids(tiny_backbone))
    head = ComprExITHead.for_backbone(tiny_backbone, standardize_layers=True)
    with pytest.raises(InvalidInputError, match="at least two tokens"):
        head.calibrate(tiny_backbone, [[5]])


@pytest.fixture
def real_backbone_fingerprint_head():
    """A standardised head built for the default SmolLM2 fingerprint (the shipped head's), not for the tiny model."""
    shipped = ComprExITHead.from_pretrained()
    config = ComprExITConfig(
        hidden_size=shipped.config.hidden_size,
        num_hidden_states=shipped.config.num_hidden_states,
        standardize_layers=True,
    )
    return ComprExITHead(config, shipped.fingerprint)


def test_segment_offsets_are_measured_in_segments():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0] = True  # 8 tokens, 2 slots at ratio 4
    mask[1, :6] = True  # 6 tokens, 2 slots
    slot_mask = torch.tensor([[True, True], [True, True]])
    distance = segment_offsets(mask, slot_mask).abs()
    assert distance.shape == (2, 8, 2)
    # 8 tokens in 2 segments: token i sits at (i + 0.5) / 4 segments; the slots at 0.5 and 1.5.
    assert torch.allclose(distance[0, :, 0], ((torch.arange(8) + 0.5) / 4 - 0.5).abs())
    assert torch.allclose(distance[0, :, 1], ((torch.arange(8) + 0.5) / 4 - 1.5).abs())
    # Each token is nearest to the slot of its own segment (segment = floor(i * K / n)).
    segment = torch.arange(6) * 2 // 6
    assert torch.equal(distance[1, :6].argmin(dim=-1), segment)


def test_locality_concentrates_the_plan_and_keeps_its_marginals():
    torch.manual_seed(0)
    anchors = torch.randn(2, 200, 32) + 3 * torch.randn(32)  # a shared direction, as in real hidden states
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[1, 90:] = False
    windows = split_windows(anchors, mask, 128)
    segment = (torch.arange(128) * 32) // 128  # full windows: 4 tokens per slot

    def own_segment_share(locality_weight: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        width = WidthTransmission(32, 16, 1.0, 0.05, 0.1, 30)
        with torch.no_grad():
            _, slot_mask, plan = width(windows, ratio=4, locality_weight=locality_weight)
        full = plan[0]  # the first window is full
        share = torch.stack([full[segment == k, k].sum() for k in range(32)]).sum() / full.sum()
        return float(share), plan, slot_mask

    without, _, _ = own_segment_share(0.0)
    share, plan, slot_mask = own_segment_share(0.5)
    assert share > 0.8 and share > 3 * without, (share, without)
    target = slot_mask / slot_mask.sum(1, keepdim=True)
    assert torch.allclose(plan.sum(dim=1), target, atol=1e-3)


def test_bound_norm_keeps_small_vectors_bounds_large_ones_and_keeps_directions():
    vectors = torch.randn(5, 16) * torch.tensor([0.01, 1.0, 10.0, 100.0, 1000.0])[:, None]
    vectors.requires_grad_(True)
    bounded = bound_norm(vectors, 10.0)
    norms, bounded_norms = vectors.norm(dim=-1), bounded.norm(dim=-1)
    assert torch.allclose(bounded_norms, 10.0 * torch.tanh(norms / 10.0), rtol=1e-5)
    assert torch.allclose(bounded[0], vectors[0], rtol=1e-4)  # far below the bound: unchanged
    assert bool((bounded_norms <= 10.0 + 1e-4).all()) and bounded_norms[-1] > 9.99
    cosine = torch.nn.functional.cosine_similarity(bounded, vectors, dim=-1)
    assert torch.allclose(cosine, torch.ones(5), atol=1e-5)
    bounded.sum().backward()
    assert bool(torch.isfinite(vectors.grad).all()) and bool((vectors.grad[:4] != 0).any(dim=-1).all())
    assert bound_norm(vectors, None) is vectors


def test_a_head_with_max_slot_norm_writes_bounded_slots(tiny_backbone):
    torch.manual_seed(0)
    head = ComprExITHead.for_backbone(tiny_backbone, max_slot_norm=0.5)
    torch.nn.init.normal_(head.projector.net[-1].weight, std=5.0)  # slots far above the bound without it
    compressor = ComprExITCompressor(tiny_backbone, head)
    slots = compressor.compress(TEXTS, ratio=4)
    norms = slots.embeddings().norm(dim=-1)
    assert norms.max() <= 0.5 + 1e-5 and norms.min() > 0.45
    unbounded = ComprExITHead(dataclasses.replace(head.config, max_slot_norm=None), head.fingerprint)
    unbounded.load_state_dict(head.state_dict())
    unbounded_slots = ComprExITCompressor(tiny_backbone, unbounded).compress(TEXTS[0], ratio=4)
    assert unbounded_slots.embeddings().norm(dim=-1).min() > 1.0


def test_the_compressor_fingerprint_changes_with_a_config_that_changes_slots(tiny_backbone):
    torch.manual_seed(0)
    head = ComprExITHead.for_backbone(tiny_backbone)
    fingerprints = set()
    for change in ({}, {"locality_weight": 0.25}, {"max_slot_norm": 4.0}, {"window": 64}):
        other = ComprExITHead(dataclasses.replace(head.config, **change), head.fingerprint)
        other.load_state_dict(head.state_dict())
        fingerprints.add(ComprExITCompressor(tiny_backbone, other).fingerprint)
    assert len(fingerprints) == 4


def test_invalid_design_options_are_refused():
    with pytest.raises(InvalidInputError, match="locality_weight"):
        ComprExITConfig(hidden_size=8, num_hidden_states=3, locality_weight=-1.0)
    for bound in (0.0, -2.0, float("nan")):
        with pytest.raises(InvalidInputError, match="max_slot_norm must be > 0"):
            ComprExITConfig(hidden_size=8, num_hidden_states=3, max_slot_norm=bound)
    with pytest.raises(InvalidInputError, match="max_slot_norm applies to the comprexit head"):
        TrainConfig(method="mean-pool", stage="sft", output_dir="x", max_slot_norm=8.0)
    with pytest.raises(InvalidInputError, match="fresh comprexit head"):
        TrainConfig(method="comprexit", stage="sft", output_dir="x", init_from="head", standardize_layers=True)
    with pytest.raises(InvalidInputError, match="fresh comprexit head"):
        TrainConfig(method="mean-pool", stage="sft", output_dir="x", standardize_layers=True)
    with pytest.raises(InvalidInputError, match="locality_weight applies to the comprexit head"):
        TrainConfig(method="comi", stage="sft", output_dir="x", locality_weight=0.25)
    with pytest.raises(InvalidInputError, match="position_binding must be true or false"):
        ComprExITConfig(hidden_size=8, num_hidden_states=3, position_binding="yes")
    with pytest.raises(InvalidInputError, match="hidden_size must be even"):
        ComprExITConfig(hidden_size=9, num_hidden_states=3, position_binding=True)
    with pytest.raises(InvalidInputError, match="position_binding applies to the comprexit head"):
        TrainConfig(method="mean-pool", stage="sft", output_dir="x", position_binding=True)


def bound_width(frequency_std: float) -> WidthTransmission:
    torch.manual_seed(0)
    width = WidthTransmission(8, 4, 1.0, 0.05, 0.1, 30, position_binding=True)
    torch.nn.init.normal_(width.position_frequencies, std=frequency_std)
    return width


def random_windows(lengths: list[int], hidden: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return torch.randn(len(lengths), max(lengths), hidden), mask


def test_position_binding_rotates_each_value_by_its_offset_from_its_slot():
    width = bound_width(0.3)
    anchors, mask = random_windows([16, 11])
    slots, slot_mask, plan = width(split_windows(anchors, mask, 16), ratio=4)
    values = width.value(width.norm(anchors)).float()
    frequencies = width.position_frequencies.detach()
    for window, length in enumerate([16, 11]):
        used = -(-length // 4)
        for k in range(used):
            centre = (k + 0.5) * length / used
            expected = sum(
                plan[window, i, k] * rotate_pairs(values[window, i], (i - centre) * frequencies) for i in range(length)
            ) / (1 / used)
            assert torch.allclose(slots[window, k], expected, atol=1e-5), (window, k)
    assert not slot_mask[1, 3]  # 11 tokens at 4x: three slots


def test_a_bound_slot_tells_the_order_of_its_tokens_and_an_unbound_one_cannot():
    """Without binding a slot is a weighted mean of its tokens' values: swapping two tokens of one segment
    leaves every slot as it was (the plan's rows swap with them). Bound, the slot they go to changes."""
    anchors, mask = random_windows([16])
    swapped = anchors.clone()
    swapped[0, [0, 1]] = anchors[0, [1, 0]]

    def slots(width: WidthTransmission, states: torch.Tensor) -> torch.Tensor:
        return width(split_windows(states, mask, 16), ratio=4)[0]

    unbound = bound_width(0.0)
    assert torch.allclose(slots(unbound, anchors), slots(unbound, swapped), atol=1e-5)
    bound = bound_width(0.3)
    assert not torch.allclose(slots(bound, anchors)[:, 0], slots(bound, swapped)[:, 0], atol=1e-3)


def test_a_head_that_starts_binding_writes_the_same_slots_until_trained_and_saves_its_frequencies(
    tiny_backbone, tmp_path
):
    torch.manual_seed(0)
    head = ComprExITHead.for_backbone(tiny_backbone).eval()
    bound = copy.deepcopy(head)
    bound.bind_positions()
    assert bound.config.position_binding and not head.config.position_binding
    plain = ComprExITCompressor(tiny_backbone, head).compress(TEXTS[0], ratio=4).embeddings()
    assert torch.allclose(ComprExITCompressor(tiny_backbone, bound).compress(TEXTS[0], ratio=4).embeddings(), plain)
    assert ComprExITCompressor(tiny_backbone, bound).fingerprint != ComprExITCompressor(tiny_backbone, head).fingerprint

    torch.nn.init.normal_(bound.width.position_frequencies, std=0.3)
    trained = ComprExITCompressor(tiny_backbone, bound).compress(TEXTS[0], ratio=4).embeddings()
    assert not torch.allclose(trained, plain, atol=1e-3)
    loaded = ComprExITHead.from_pretrained(bound.save_pretrained(tmp_path / "bound")).eval()
    assert loaded.config.position_binding
    assert torch.equal(loaded.width.position_frequencies, bound.width.position_frequencies)
    assert torch.equal(ComprExITCompressor(tiny_backbone, loaded).compress(TEXTS[0], ratio=4).embeddings(), trained)


@pytest.mark.slow
def test_standardisation_unsaturates_the_layer_attention_on_smollm2(real_backbone):
    """On SmolLM2's raw states a fresh head's attention over layers is nearly one-hot from the start; standardised,
    it starts near the uniform mixture the zero-initialised query intends."""
    passages = token_ids(real_backbone)
    _, states, mask = anchor_states(real_backbone, passages)
    torch.manual_seed(0)
    raw = ComprExITHead.for_backbone(real_backbone)
    torch.manual_seed(0)
    standardised = ComprExITHead.for_backbone(real_backbone, standardize_layers=True)
    standardised.calibrate(real_backbone, passages)
    with torch.no_grad():
        raw_weights = raw.depth(states)[1][mask]
        standardised_weights = standardised.depth(states)[1][mask]
    assert raw_weights.max(dim=-1).values.mean() > 0.5
    assert standardised_weights.max(dim=-1).values.mean() < 0.2


@pytest.mark.slow
def test_the_shipped_multi_ratio_head_starts_binding_where_it_stands_on_smollm2(real_backbone):
    """The 16x comparison starts from the shipped multi-ratio head: bound at zero frequencies it must write the
    slots it writes now, and binding must change them as soon as the frequencies move."""
    head = ComprExITHead.from_pretrained(MULTI_RATIO_HEAD).eval()
    bound = copy.deepcopy(head)
    bound.bind_positions()
    plain = ComprExITCompressor(real_backbone, head).compress(TEXTS[1], ratio=16).embeddings()
    assert torch.allclose(ComprExITCompressor(real_backbone, bound).compress(TEXTS[1], ratio=16).embeddings(), plain)
    torch.nn.init.constant_(bound.width.position_frequencies, 0.1)
    moved = ComprExITCompressor(real_backbone, bound).compress(TEXTS[1], ratio=16).embeddings()
    assert not torch.allclose(moved, plain, atol=1e-3)
