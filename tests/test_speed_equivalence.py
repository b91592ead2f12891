"""The speed-ups of the head (chunked depth step, scaling-domain Sinkhorn, host-side window layout)
leave its results unchanged: each is checked against the reference form or a copy of the old code."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from comprexit_rag import ComprExITConfig, ComprExITHead
from comprexit_rag.methods.comprexit.depth import DepthTransmission
from comprexit_rag.methods.comprexit.sinkhorn import MAX_SCALING_EXPONENT, log_sinkhorn, scaling_sinkhorn, sinkhorn
from comprexit_rag.methods.comprexit.width import WidthTransmission, Windows, join_windows, segment_means, split_windows
from comprexit_rag.methods.slot_head import SlotCompressor

# --------------------------------------------------------------------------------------------
# Copies of the implementation before the speed-ups (the references of these tests).


def old_weighted_sum(states: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    total = None
    for index, state in enumerate(states):
        weight = weights[index] if weights.dim() == 1 else weights[..., index : index + 1]
        term = state.float() * weight
        total = term if total is None else total + term
    return total


def old_depth_forward(depth: DepthTransmission, hidden_states: Sequence[torch.Tensor]):
    mixture = torch.softmax(depth.layer_logits, dim=0)
    query = depth.query(old_weighted_sum(hidden_states, mixture))
    key_query = query @ depth.key.weight.to(query.dtype)
    offset = query @ (depth.key.bias + depth.layer_embedding).to(query.dtype).T
    logits = torch.stack(
        [torch.einsum("bth,bth->bt", state.to(key_query.dtype), key_query) for state in hidden_states], dim=-1
    )
    weights = torch.softmax((logits + offset).float() * depth.scale, dim=-1)
    pooled = old_weighted_sum(hidden_states, weights)
    return depth.value(pooled), weights


def old_split_windows(anchors: torch.Tensor, mask: torch.Tensor, window: int) -> Windows:
    batch, length, hidden = anchors.shape
    counts = mask.sum(dim=1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = anchors.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden))
    num_windows = -(-length // window)
    packed = F.pad(packed, (0, 0, 0, num_windows * window - length)).view(batch, num_windows, window, hidden)
    position = torch.arange(num_windows * window, device=anchors.device).view(num_windows, window)
    valid = position.unsqueeze(0) < counts.view(batch, 1, 1)
    used = valid.any(dim=-1)
    owner = torch.arange(batch, device=anchors.device).unsqueeze(1).expand(batch, num_windows)
    return Windows(anchors=packed[used], mask=valid[used], owner=owner[used])


def old_join_windows(slots, slot_mask, owner, batch_size):
    counts = torch.zeros(batch_size, dtype=torch.long, device=slots.device)
    counts.index_add_(0, owner, slot_mask.sum(dim=1))
    pieces = list(torch.split(slots[slot_mask], counts.tolist()))
    padded = pad_sequence(pieces, batch_first=True)
    mask = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < counts.unsqueeze(1)
    return padded, mask


def old_width_forward(width: WidthTransmission, windows: Windows, ratio: int):
    anchors, mask = windows.anchors, windows.mask
    initial_slots, slot_mask = segment_means(windows, ratio)
    tokens = mask.sum(dim=1, keepdim=True)
    slots_used = slot_mask.sum(dim=1, keepdim=True)
    normed_anchors = width.norm(anchors)
    cost = 1.0 - F.normalize(width.cost(normed_anchors).float(), dim=-1) @ F.normalize(
        width.cost(width.norm(initial_slots)).float(), dim=-1
    ).transpose(1, 2)
    scores = width.source_score(normed_anchors).squeeze(-1).float() / width.source_temperature
    learned = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    source_mass = (1 - width.uniform_mix) * learned + width.uniform_mix * mask / tokens
    target_mass = slot_mask / slots_used
    plan = log_sinkhorn(cost, source_mass, target_mass, width.epsilon, width.iterations)
    values = width.value(normed_anchors).float()
    slots = (plan.transpose(1, 2) @ values) / target_mass.clamp(min=1e-12).unsqueeze(-1)
    return slots * slot_mask.unsqueeze(-1), slot_mask, plan


def old_head_forward(head: ComprExITHead, hidden_states, anchor_mask, ratio):
    anchors, layer_weights = old_depth_forward(head.depth, hidden_states)
    windows = old_split_windows(anchors, anchor_mask.to(anchors.device), head.config.window)
    window_slots, slot_mask, plans = old_width_forward(head.width, windows, ratio)
    slots = head.projector(window_slots)
    padded, mask = old_join_windows(slots, slot_mask, windows.owner, anchors.shape[0])
    return padded, mask, layer_weights, plans, windows


# --------------------------------------------------------------------------------------------
# Fixtures


def random_states(batch: int, length: int, layers: int, hidden: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, hidden, generator=generator) * (1 + layer) for layer in range(layers)]


def random_mask(batch: int, length: int, counts: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Right-padded rows with ``counts`` valid tokens after a BOS-like first position, plus a few holes."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, count in enumerate(counts):
        mask[row, 1 : 1 + count] = True
    generator = torch.Generator().manual_seed(seed)
    holes = torch.rand(batch, length, generator=generator) < 0.05
    return mask & ~holes


def small_head(layers: int = 5, hidden: int = 16, window: int = 16, seed: int = 0) -> ComprExITHead:
    torch.manual_seed(seed)
    config = ComprExITConfig(
        hidden_size=hidden, num_hidden_states=layers, window=window, segment_length=4 * window, key_dim=8, cost_dim=8
    )
    head = ComprExITHead(config, fingerprint=None).eval()
    with torch.no_grad():  # away from the initialisation, so that every term matters
        torch.nn.init.normal_(head.depth.layer_logits, std=1.0)
        torch.nn.init.normal_(head.width.source_score.weight, std=0.5)
    return head


# --------------------------------------------------------------------------------------------
# Depth-wise transmission


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 40, 4096])
def test_chunked_depth_equals_direct_form(chunk_tokens):
    head = small_head()
    head.depth.chunk_tokens = chunk_tokens  # 2 x 20 tokens: chunks end inside and across rows
    states = random_states(2, 20, 5, 16)
    fast, fast_weights = head.depth(states)
    direct, direct_weights = head.depth.forward_direct(states)
    old, old_weights = old_depth_forward(head.depth, states)
    with torch.no_grad():  # no autograd: chunks are stacked into one reused buffer
        reused, reused_weights = head.depth(states)
    assert torch.equal(reused, fast.detach()) and torch.equal(reused_weights, fast_weights.detach())
    assert fast.shape == (2, 20, 16) and fast_weights.shape == (2, 20, 5)
    assert fast_weights.dtype == torch.float32
    assert torch.allclose(fast, direct, atol=1e-5)
    assert torch.allclose(fast_weights, direct_weights, atol=1e-6)
    assert torch.allclose(fast, old, atol=1e-5)
    assert torch.allclose(fast_weights, old_weights, atol=1e-6)


def test_chunked_depth_gradients_equal_direct_form():
    head = small_head()
    head.depth.chunk_tokens = 7
    states = random_states(2, 10, 5, 16)
    grads = []
    for forward in (head.depth, head.depth.forward_direct):
        head.zero_grad()
        anchors, weights = forward(states)
        (anchors.square().mean() + weights.square().sum()).backward()
        grads.append({name: p.grad.clone() for name, p in head.depth.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_chunked_depth_handles_no_tokens():
    head = small_head()
    anchors, weights = head.depth([state[:, :0] for state in random_states(2, 4, 5, 16)])
    assert anchors.shape == (2, 0, 16) and weights.shape == (2, 0, 5)


def test_chunked_depth_under_bf16_autocast_stays_close():
    head = small_head()
    head.depth.chunk_tokens = 7
    states = [state.bfloat16() for state in random_states(2, 10, 5, 16)]
    direct, _ = head.depth.forward_direct(states)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, weights = head.depth(states)
    assert fast.dtype == torch.bfloat16 and weights.dtype == torch.float32
    assert (fast.float() - direct).norm() / direct.norm() < 2e-2  # bf16 rounding


# --------------------------------------------------------------------------------------------
# Sinkhorn


def masked_problem(batch: int, n: int, m: int, max_cost: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=generator) * max_cost
    source = torch.softmax(torch.randn(batch, n, generator=generator) * 2, dim=-1) + 0.01
    target = torch.rand(batch, m, generator=generator) + 0.1
    for row in range(batch):  # padding rows and unused slots, as in width-wise transmission
        source[row, int(torch.randint(1, n + 1, (), generator=generator)) :] = 0
        target[row, int(torch.randint(1, m + 1, (), generator=generator)) :] = 0
    return cost, source / source.sum(1, keepdim=True), target / target.sum(1, keepdim=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("epsilon", [0.1, 0.07])
def test_scaling_sinkhorn_equals_log_sinkhorn(seed, epsilon):
    cost, source, target = masked_problem(6, 40, 10, max_cost=2.0, seed=seed)
    expected = log_sinkhorn(cost, source, target, epsilon, 30)
    plan = sinkhorn(cost, source, target, epsilon, 30, max_cost=2.0)
    assert torch.equal(plan, scaling_sinkhorn(cost, source, target, epsilon, 30))  # the fast form was chosen
    assert ((plan - expected).norm() / expected.norm()) < 1e-5
    assert torch.allclose(plan, expected, rtol=1e-4, atol=1e-9)
    # Masked rows and columns get exactly zero mass; columns match the target.
    assert (plan[source == 0] == 0).all()
    assert (plan.transpose(1, 2)[target == 0] == 0).all()
    assert torch.allclose(plan.sum(dim=1), target, atol=1e-6)


def test_scaling_sinkhorn_gradients_are_finite_and_match():
    cost, source, target = masked_problem(4, 30, 8, max_cost=2.0, seed=7)
    weights = torch.randn(4, 30, 8, generator=torch.Generator().manual_seed(1))
    grads = []
    for function in (log_sinkhorn, scaling_sinkhorn):
        cost_ = cost.clone().requires_grad_()
        source_ = source.clone().requires_grad_()
        target_ = target.clone().requires_grad_()
        (function(cost_, source_, target_, 0.1, 30) * weights).sum().backward()
        grads.append((cost_.grad, source_.grad, target_.grad))
    for fast, reference in zip(grads[1], grads[0], strict=True):
        assert torch.isfinite(fast).all()
        assert (fast - reference).norm() / reference.norm() < 1e-4


def test_sinkhorn_falls_back_to_log_domain():
    cost, source, target = masked_problem(2, 12, 5, max_cost=2.0, seed=3)
    expected = log_sinkhorn(cost, source, target, 0.01, 30)
    # Known bound too large for the scaling form (2 / 0.01 = 200 > MAX_SCALING_EXPONENT).
    assert MAX_SCALING_EXPONENT < 2.0 / 0.01
    assert torch.equal(sinkhorn(cost, source, target, 0.01, 30, max_cost=2.0), expected)
    # No bound given: read from the costs.
    assert torch.equal(sinkhorn(cost, source, target, 0.01, 30), expected)
    assert torch.equal(sinkhorn(cost, source, target, 0.1, 30), scaling_sinkhorn(cost, source, target, 0.1, 30))
    shifted = cost - 1.0  # negative costs: log domain
    assert torch.equal(sinkhorn(shifted, source, target, 0.1, 30), log_sinkhorn(shifted, source, target, 0.1, 30))


# --------------------------------------------------------------------------------------------
# Windows


@pytest.mark.parametrize("counts", [[40, 3, 0], [16, 17, 32], [0, 0, 0]])
def test_windows_match_old_layout(counts):
    anchors = torch.randn(3, 40, 4)
    mask = random_mask(3, 40, [min(count, 39) for count in counts])
    old = old_split_windows(anchors, mask, 16)
    new = split_windows(anchors, mask, 16)
    assert torch.equal(new.anchors, old.anchors)
    assert torch.equal(new.mask, old.mask)
    assert torch.equal(new.owner, old.owner)
    assert new.owners == old.owner.tolist()
    assert new.lengths == old.mask.sum(1).tolist()

    ratio = 3
    _, slot_mask = segment_means(new, ratio)
    slots = torch.randn(*slot_mask.shape, 4) * slot_mask.unsqueeze(-1)
    assert new.slot_counts(ratio) == slot_mask.sum(1).tolist()
    expected, expected_mask = old_join_windows(slots, slot_mask, old.owner, 3)
    for joined, joined_mask in (
        join_windows(slots, slot_mask, new.owners, 3, slot_counts=new.slot_counts(ratio)),
        join_windows(slots, slot_mask, new.owner, 3, slot_counts=new.slot_counts(ratio)),
        join_windows(slots, slot_mask, new.owner, 3),
    ):
        assert torch.equal(joined, expected)
        assert torch.equal(joined_mask, expected_mask)


# --------------------------------------------------------------------------------------------
# The whole head and the compressor


@pytest.mark.parametrize("ratio", [1, 3, 4])
def test_head_output_unchanged(ratio):
    head = small_head()
    head.depth.chunk_tokens = 9
    states = random_states(3, 40, 5, 16, seed=ratio)
    anchor_mask = random_mask(3, 40, [39, 20, 5], seed=ratio)
    with torch.no_grad():
        output = head(states, anchor_mask, ratio=ratio)
        slots, slot_mask, layer_weights, plans, windows = old_head_forward(head, states, anchor_mask, ratio)
    assert torch.equal(output.slot_mask, slot_mask)
    # The mask of every row is a prefix (SlotCompressor slices rows by their counts).
    counts = slot_mask.sum(1, keepdim=True)
    assert torch.equal(slot_mask, torch.arange(slot_mask.shape[1]).unsqueeze(0) < counts)
    assert output.slots.shape == slots.shape
    assert torch.allclose(output.slots, slots, atol=1e-5)
    assert torch.allclose(output.layer_weights, layer_weights, atol=1e-6)
    assert torch.allclose(output.transport_plans, plans, rtol=1e-4, atol=1e-8)
    assert torch.equal(output.window_owner, windows.owner)
    assert torch.equal(output.window_mask, windows.mask)


def test_compressor_rows_match_boolean_selection(tiny_backbone):
    torch.manual_seed(0)
    head = ComprExITHead.for_backbone(tiny_backbone, window=16, segment_length=64)
    compressor = SlotCompressor(tiny_backbone, head, batch_size=3)
    token_ids = [list(range(100, 100 + n)) for n in (5, 40, 64, 23)]
    soft = compressor.compress_token_ids(token_ids, ratio=3)
    bos = [tiny_backbone.bos_token_id] if tiny_backbone.bos_token_id is not None else []
    for index, ids in enumerate(token_ids):
        input_ids = torch.tensor([bos + ids])
        anchor_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        anchor_mask[0, len(bos) :] = True
        with torch.no_grad():
            states = tiny_backbone.hidden_states(input_ids, torch.ones_like(input_ids))
            slots, slot_mask, *_ = old_head_forward(head, states, anchor_mask, 3)
        expected = slots[0, slot_mask[0]]
        assert torch.allclose(soft.passage(index), expected, atol=1e-5)
