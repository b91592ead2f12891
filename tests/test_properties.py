"""Property tests (hypothesis) of the transport, the windowing and the COMI allocator.

``log_sinkhorn``: marginals, zero mass where masked, permutation equivariance and padding
invariance (zero-mass rows and columns: exact at any iteration). ``split_windows``: padding
invariance. ``allocate_group_sizes``: the invariants of tests/methods/test_comi.py (sizes >= 1, sum n,
G fixed, higher MIG never gets more tokens) under extreme scores and sizes, plus constant-score,
shift and NaN behaviour (not duplicated from there).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import allocate_group_sizes, near_equal_sizes, num_groups
from comprexit_rag.methods.comprexit.sinkhorn import log_sinkhorn
from comprexit_rag.methods.comprexit.width import split_windows

PROPERTY = settings(max_examples=60, deadline=None, database=None)

# ---------------------------------------------------------------------------------------------
# log_sinkhorn
# ---------------------------------------------------------------------------------------------


@st.composite
def transport_problem(draw, min_epsilon: float = 0.1, max_epsilon: float = 2.0):
    """Costs in [0, 2] (as 1 - cosine), masses in [0.05, 1] normalised, some rows and columns masked.

    Every batch entry keeps at least one row and one column of positive mass (the documented
    precondition). Values come from a drawn seed; shapes, masks and epsilon are drawn directly.
    """
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(1, 24))
    m = draw(st.integers(1, 12))
    row_masks = [draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any)) for _ in range(batch)]
    col_masks = [draw(st.lists(st.booleans(), min_size=m, max_size=m).filter(any)) for _ in range(batch)]
    epsilon = draw(st.floats(min_epsilon, max_epsilon))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cost = torch.rand(batch, n, m, generator=generator) * 2
    rows, cols = torch.tensor(row_masks), torch.tensor(col_masks)
    source = (torch.rand(batch, n, generator=generator) * 0.95 + 0.05) * rows
    target = (torch.rand(batch, m, generator=generator) * 0.95 + 0.05) * cols
    return cost, source / source.sum(1, keepdim=True), target / target.sum(1, keepdim=True), epsilon


# Convergence is geometric at a rate set by (cost range) / epsilon: for costs in [0, 2], epsilon
# >= 0.3 brings both marginals within 1e-3 in 200 iterations. At the head's epsilon = 0.1 and its
# default 30 iterations, columns are exact but rows can be off by a few 1e-2 (see RELIABILITY.md).
@PROPERTY
@given(transport_problem(min_epsilon=0.3))
def test_sinkhorn_marginals_within_1e3_with_200_iterations(problem):
    cost, source, target, epsilon = problem
    plan = log_sinkhorn(cost, source, target, epsilon=epsilon, iterations=200)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(dim=2), source, atol=1e-3, rtol=0)
    torch.testing.assert_close(plan.sum(dim=1), target, atol=1e-3, rtol=0)


@PROPERTY
@given(transport_problem(), st.integers(1, 30))
def test_sinkhorn_columns_exact_and_masked_rows_and_columns_get_no_mass(problem, iterations):
    cost, source, target, epsilon = problem
    plan = log_sinkhorn(cost, source, target, epsilon=epsilon, iterations=iterations)
    torch.testing.assert_close(plan.sum(dim=1), target, atol=1e-5, rtol=0)  # the last update is a column update
    assert (plan[source == 0] == 0).all()  # masked rows: [rows, m]
    assert (plan.transpose(1, 2)[target == 0] == 0).all()  # masked columns: [columns, n]
    assert torch.isfinite(plan).all()


@PROPERTY
@given(transport_problem(), st.randoms(use_true_random=False))
def test_sinkhorn_is_permutation_equivariant(problem, rng):
    cost, source, target, epsilon = problem
    rows = list(range(cost.shape[1]))
    cols = list(range(cost.shape[2]))
    rng.shuffle(rows)
    rng.shuffle(cols)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    plan = log_sinkhorn(cost, source, target, epsilon=epsilon)
    permuted = log_sinkhorn(cost[:, rows_t][:, :, cols_t], source[:, rows_t], target[:, cols_t], epsilon=epsilon)
    torch.testing.assert_close(permuted, plan[:, rows_t][:, :, cols_t], atol=1e-6, rtol=1e-4)


def pad(cost, source, target, extra_rows: int, extra_cols: int, seed: int):
    """Append zero-mass rows and columns, with arbitrary costs there."""
    batch, n, m = cost.shape
    generator = torch.Generator().manual_seed(seed)
    padded_cost = torch.rand(batch, n + extra_rows, m + extra_cols, generator=generator) * 2
    padded_cost[:, :n, :m] = cost
    padded_source = torch.cat([source, torch.zeros(batch, extra_rows)], dim=1)
    padded_target = torch.cat([target, torch.zeros(batch, extra_cols)], dim=1)
    return padded_cost, padded_source, padded_target


@PROPERTY
@given(transport_problem(), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_sinkhorn_is_invariant_to_zero_mass_rows_at_any_iteration(problem, extra_rows, iterations, seed):
    cost, source, target, epsilon = problem
    n = cost.shape[1]
    plan = log_sinkhorn(cost, source, target, epsilon=epsilon, iterations=iterations)
    padded = log_sinkhorn(*pad(cost, source, target, extra_rows, 0, seed), epsilon=epsilon, iterations=iterations)
    torch.testing.assert_close(padded[:, :n], plan, atol=1e-6, rtol=1e-5)
    assert (padded[:, n:] == 0).all()


@PROPERTY
@given(transport_problem(min_epsilon=0.3), st.integers(0, 5), st.integers(0, 5), st.integers(0, 2**31 - 1))
def test_sinkhorn_is_invariant_to_zero_mass_padding_once_converged(problem, extra_rows, extra_cols, seed):
    cost, source, target, epsilon = problem
    _, n, m = cost.shape
    plan = log_sinkhorn(cost, source, target, epsilon=epsilon, iterations=200)
    padded = log_sinkhorn(*pad(cost, source, target, extra_rows, extra_cols, seed), epsilon=epsilon, iterations=200)
    torch.testing.assert_close(padded[:, :n, :m], plan, atol=1e-5, rtol=1e-4)
    assert (padded[:, n:] == 0).all() and (padded[:, :, m:] == 0).all()


def test_sinkhorn_zero_mass_columns_change_nothing_at_30_iterations():
    # Regression: unused columns used to start at log_v = 0 and leak into the first row update.
    generator = torch.Generator().manual_seed(8)  # a slowly converging problem (found by search)
    cost = torch.rand(1, 6, 3, generator=generator) * 2
    source = torch.rand(1, 6, generator=generator) + 0.05
    target = torch.rand(1, 3, generator=generator) + 0.05
    source, target = source / source.sum(), target / target.sum()
    plan = log_sinkhorn(cost, source, target, epsilon=0.1, iterations=30)
    padded_cost = torch.cat([cost, torch.zeros(1, 6, 2)], dim=2)  # two unused, cheap-looking columns
    padded = log_sinkhorn(padded_cost, source, torch.cat([target, torch.zeros(1, 2)], dim=1), epsilon=0.1)
    torch.testing.assert_close(padded[:, :, :3], plan, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# split_windows
# ---------------------------------------------------------------------------------------------


@st.composite
def padded_layouts(draw):
    """The same sequences laid out twice: packed at the front, and scattered among padding."""
    batch = draw(st.integers(1, 4))
    window = draw(st.integers(1, 16))
    hidden = draw(st.integers(1, 4))
    counts = [draw(st.integers(0, 40)) for _ in range(batch)]
    gaps = [draw(st.lists(st.integers(0, 3), min_size=count + 1, max_size=count + 1)) for count in counts]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tokens = [torch.randn(count, hidden, generator=generator) for count in counts]

    packed_length = max(max(counts), 1)
    packed = torch.randn(batch, packed_length, hidden, generator=generator)  # padding holds garbage
    packed_mask = torch.zeros(batch, packed_length, dtype=torch.bool)
    scattered_length = max(count + sum(gap) for count, gap in zip(counts, gaps, strict=True)) + draw(st.integers(0, 5))
    scattered = torch.randn(batch, max(scattered_length, 1), hidden, generator=generator)
    scattered_mask = torch.zeros(batch, max(scattered_length, 1), dtype=torch.bool)
    for row, (count, gap) in enumerate(zip(counts, gaps, strict=True)):
        packed[row, :count] = tokens[row]
        packed_mask[row, :count] = True
        position = gap[0]
        for index in range(count):
            scattered[row, position] = tokens[row][index]
            scattered_mask[row, position] = True
            position += 1 + gap[index + 1]
    return window, (packed, packed_mask), (scattered, scattered_mask), draw(st.integers(0, 3))


@PROPERTY
@given(padded_layouts())
def test_split_windows_is_invariant_to_padding(layouts):
    window, (packed, packed_mask), (scattered, scattered_mask), empty_rows = layouts
    reference = split_windows(packed, packed_mask, window)
    # Padding anywhere in a row, and all-padding rows appended to the batch, change nothing.
    hidden = scattered.shape[-1]
    scattered = torch.cat([scattered, torch.randn(empty_rows, scattered.shape[1], hidden)])
    scattered_mask = torch.cat([scattered_mask, torch.zeros(empty_rows, scattered.shape[1], dtype=torch.bool)])
    other = split_windows(scattered, scattered_mask, window)
    assert torch.equal(other.owner, reference.owner)
    assert torch.equal(other.mask, reference.mask)
    assert torch.equal(other.anchors[other.mask], reference.anchors[reference.mask])
    assert reference.mask.shape[1] == window
    assert int(reference.mask.sum()) == int(packed_mask.sum())  # every valid token is in exactly one window


# ---------------------------------------------------------------------------------------------
# allocate_group_sizes (the basic invariants are in tests/methods/test_comi.py; these extend them)
# ---------------------------------------------------------------------------------------------


@st.composite
def extreme_allocation(draw):
    """Large n, any number of groups up to n, scores spanning +-1e4 (softmax saturates, many pins)."""
    n = draw(st.integers(1, 5000))
    groups = draw(st.integers(1, min(n, 300)))
    scale = draw(st.sampled_from([1e-6, 1.0, 30.0, 1e4]))
    values = draw(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=groups, max_size=groups))
    return torch.tensor(values, dtype=torch.float32) * scale, n


@PROPERTY
@given(extreme_allocation())
def test_allocation_invariants_hold_for_extreme_scores_and_sizes(case):
    mig, n = case
    sizes = allocate_group_sizes(mig, n)
    assert sizes.shape == mig.shape and sizes.dtype == torch.long
    assert int(sizes.min()) >= 1 and int(sizes.sum()) == n
    order = torch.argsort(mig, stable=True)
    assert bool((sizes[order][1:] <= sizes[order][:-1]).all())  # higher MIG never gets more tokens


@PROPERTY
@given(st.integers(1, 3000), st.integers(1, 200), st.floats(-50, 50, allow_nan=False))
def test_allocation_of_equal_scores_is_the_near_equal_split(n, groups, value):
    groups = min(groups, n)
    sizes = allocate_group_sizes(torch.full((groups,), value), n)
    assert torch.equal(sizes, near_equal_sizes(n, groups))


@PROPERTY
@given(extreme_allocation(), st.floats(-100, 100, allow_nan=False))
def test_allocation_is_invariant_to_shifting_every_score(case, shift):
    mig, n = case
    sizes = allocate_group_sizes(mig, n)
    shifted = allocate_group_sizes(mig.double() + shift, n)
    assert int(shifted.sum()) == n
    assert int((shifted - sizes).abs().max()) <= 1  # only float rounding of the shares can move one token


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_allocation_refuses_non_finite_scores(bad):
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        allocate_group_sizes(torch.tensor([0.0, bad, 1.0]), num_groups(12, 4) * 4)
