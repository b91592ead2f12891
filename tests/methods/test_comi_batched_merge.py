"""The batched COMI merge (``mig_merge_batch``, ``COMIMerger.forward``) against the per-row ``mig_merge``."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comprexit_rag.backbone import BackboneFingerprint
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import COMIConfig, COMIMerger, group_mig, mig_merge, near_equal_sizes, num_groups
from comprexit_rag.methods.comi.merge import mig_merge_batch

HIDDEN = 24


def per_row_reference(
    states: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, ratio: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(merged [G_b, H], sizes [G_b]) of every row by the single-sequence ``mig_merge``."""
    return [mig_merge(states[row][mask[row]], query[row], ratio)[:2] for row in range(states.shape[0])]


def has_rounding_ties(row_states: torch.Tensor, query: torch.Tensor, ratio: int) -> bool:
    """Whether two initial groups' MIGs are within float32 rounding of each other (e.g. repeated groups).

    Which of such groups gets a leftover token is then decided by rounding, and both paths round
    differently (one ``mm`` per row against one ``bmm``), so their sizes may legitimately differ there.
    """
    count = row_states.shape[0]
    if count == 0:
        return False
    sizes = near_equal_sizes(count, num_groups(count, ratio), device=row_states.device)
    mig = group_mig(row_states, query, sizes).sort().values
    return bool(((mig[1:] - mig[:-1]) < 1e-6).any())


def assert_matches_per_row(states: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, ratio: int) -> int:
    """Check ``mig_merge_batch`` against ``mig_merge`` row by row; returns how many non-empty rows matched exactly."""
    merged, merged_mask, sizes = mig_merge_batch(states, mask, query, ratio)
    expected = per_row_reference(states, mask, query, ratio)
    groups = max(num_groups(int(n), ratio) for n in mask.sum(dim=1))
    assert merged.shape == (states.shape[0], groups, states.shape[2]) and merged.dtype == torch.float32
    assert merged_mask.shape == sizes.shape == (states.shape[0], groups)
    exact = 0
    for row, (row_merged, row_sizes) in enumerate(expected):
        count = row_sizes.numel()
        assert merged_mask[row].tolist() == [True] * count + [False] * (groups - count), f"row {row}"
        assert not bool(sizes[row, count:].any()) and not bool(merged[row, count:].any()), f"row {row}: padding"
        if count == 0:
            continue
        if has_rounding_ties(states[row][mask[row]], query[row], ratio):
            assert sorted(sizes[row, :count].tolist()) == sorted(row_sizes.tolist()), f"row {row}"
            continue
        assert torch.equal(sizes[row, :count], row_sizes), f"row {row}: group sizes differ"
        torch.testing.assert_close(merged[row, :count], row_merged, atol=1e-5, rtol=1e-5, msg=f"row {row}")
        exact += 1
    return exact


def varied_batch(seed: int, ratio: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of 150, 0, 1, ratio - 1, ratio, 3 * ratio + 1, 150 and about 40 scattered tokens, with ties."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [150, 0, 1, max(ratio - 1, 1), ratio, 3 * ratio + 1, 150, 0]
    width = 160
    states = torch.randn(len(lengths), width, HIDDEN, generator=generator)
    query = torch.randn(len(lengths), HIDDEN, generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, 1 : 1 + length] = True  # BOS first, then the context, as ``iter_query_batches`` builds it
    # Row 0: a token repeated (and scaled) five times: tied relevance, so the representative tie-break counts.
    states[0, 5:10] = states[0, 4] * torch.tensor([1.0, 2.0, 0.5, 1.0, 4.0]).unsqueeze(1)
    # Row 5: a group repeated (tied MIG); row 6: every token the same (everything tied).
    block = min(ratio, 4)
    states[5, 1 + block : 1 + 2 * block] = states[5, 1 : 1 + block]
    states[6] = states[6, 0]
    # Row 7: scattered, non-contiguous tokens.
    mask[7] = torch.rand(width, generator=generator) < 0.25
    return states, mask, query


@pytest.mark.parametrize("ratio", [2, 4, 8, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_merge_equals_per_row_merge(ratio, seed):
    # Rows 0, 5 and 6 may hold rounding ties; rows 2, 3, 4 and 7 never do.
    assert assert_matches_per_row(*varied_batch(seed, ratio), ratio) >= 4


@pytest.mark.parametrize("ratio", [1, 3, 128])
def test_batched_merge_equals_per_row_merge_at_extreme_ratios(ratio):
    assert assert_matches_per_row(*varied_batch(3, ratio), ratio) >= 4


@st.composite
def random_batch(draw, repeated_tokens: bool):
    rows = draw(st.integers(min_value=1, max_value=6))
    width = draw(st.integers(min_value=1, max_value=70))
    generator = torch.Generator().manual_seed(draw(st.integers(min_value=0, max_value=2**31 - 1)))
    mask = torch.rand(rows, width, generator=generator) < draw(st.sampled_from([0.1, 0.5, 0.9, 1.0]))
    states = torch.randn(rows, width, HIDDEN, generator=generator)
    if repeated_tokens:  # copies of a few tokens, some scaled: exact ties everywhere
        source = torch.randint(0, min(3, width), (rows, width), generator=generator)
        scale = torch.randint(1, 3, (rows, width, 1), generator=generator).float()
        states = states.gather(1, source.unsqueeze(-1).expand(-1, -1, HIDDEN)) * scale
    query = torch.randn(rows, HIDDEN, generator=generator)
    return states, mask, query, draw(st.sampled_from([1, 2, 4, 8, 16]))


@settings(max_examples=60, deadline=None, database=None)
@given(random_batch(repeated_tokens=False))
def test_batched_merge_equals_per_row_merge_on_random_masks(case):
    assert_matches_per_row(*case)


@settings(max_examples=60, deadline=None, database=None)
@given(random_batch(repeated_tokens=True))
def test_batched_merge_matches_per_row_merge_on_repeated_tokens(case):
    assert_matches_per_row(*case)


def test_batched_merge_of_low_precision_states_matches_per_row():
    states, mask, query = varied_batch(4, 4)
    assert_matches_per_row(states.bfloat16(), mask, query.bfloat16(), 4)


def test_batched_merge_of_empty_rows_has_no_slots():
    merged, merged_mask, sizes = mig_merge_batch(
        torch.randn(3, 5, HIDDEN), torch.zeros(3, 5, dtype=torch.bool), torch.randn(3, HIDDEN), 4
    )
    assert merged.shape == (3, 0, HIDDEN) and merged_mask.shape == sizes.shape == (3, 0)


def test_batched_merge_rejects_mismatched_shapes():
    with pytest.raises(InvalidInputError):
        mig_merge_batch(torch.randn(2, 5, HIDDEN), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, HIDDEN), 4)
    with pytest.raises(InvalidInputError):
        mig_merge_batch(torch.randn(2, 5, HIDDEN), torch.ones(2, 5, dtype=torch.bool), torch.randn(HIDDEN), 4)


# ---------------------------------------------------------------------------------------------
# COMIMerger.forward
# ---------------------------------------------------------------------------------------------


def make_merger() -> COMIMerger:
    torch.manual_seed(0)
    fingerprint = BackboneFingerprint("test", HIDDEN, 2, 100, "0" * 64)
    return COMIMerger(COMIConfig(hidden_size=HIDDEN, num_hidden_states=3), fingerprint)


def per_row_forward(
    merger: COMIMerger, states: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, ratio: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merger's forward as a loop of ``mig_merge`` over rows (its implementation before batching)."""
    merged = [row_merged for row_merged, _ in per_row_reference(states, mask, query, ratio)]
    counts = torch.tensor([m.shape[0] for m in merged])
    projected = merger.projector(torch.cat(merged))
    slots = torch.nn.utils.rnn.pad_sequence(list(torch.split(projected, counts.tolist())), batch_first=True)
    slot_mask = torch.arange(slots.shape[1]).unsqueeze(0) < counts.unsqueeze(1)
    return slots, slot_mask


@pytest.mark.parametrize("ratio", [2, 4, 8, 16])
def test_merger_forward_equals_the_per_row_loop(ratio):
    merger = make_merger()
    states, mask, query = varied_batch(5, ratio)
    slots, slot_mask = merger(states, mask, query, ratio=ratio)
    expected_slots, expected_mask = per_row_forward(merger, states, mask, query, ratio)
    assert torch.equal(slot_mask, expected_mask)
    torch.testing.assert_close(slots, expected_slots, atol=1e-5, rtol=1e-5)


def test_merger_forward_trains_the_projector_only_on_real_slots():
    merger = make_merger()
    states, mask, query = varied_batch(6, 4)
    slots, slot_mask = merger(states, mask, query, ratio=4)
    assert slots.requires_grad and not bool(slots[~slot_mask].any())
    slots.pow(2).sum().backward()
    reference = make_merger()
    per_row_forward(reference, states, mask, query, 4)[0].pow(2).sum().backward()
    for batched, looped in zip(merger.projector.parameters(), reference.projector.parameters(), strict=True):
        torch.testing.assert_close(batched.grad, looped.grad, atol=1e-4, rtol=1e-4)
