"""The chunked LM-head cross-entropy equals the unchunked one, in value and in both gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comprexit_rag.training.linear_cross_entropy import linear_cross_entropy


def reference_and_chunked(hidden, weight, labels, chunk_rows):
    results = []
    for loss_of in (
        lambda h, w: F.cross_entropy((h.to(w.dtype) @ w.T).float(), labels),
        lambda h, w: linear_cross_entropy(h, w, labels, chunk_rows=chunk_rows),
    ):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_of(h, w)
        (loss * 3.0).backward()  # an incoming gradient other than 1
        results.append((loss.detach(), h.grad, w.grad))
    return results


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 4096])
def test_float32_matches_cross_entropy_of_the_full_logits(chunk_rows):
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 16, generator=generator), torch.randn(50, 16, generator=generator)
    labels = torch.randint(0, 50, (37,), generator=generator)
    (loss, grad_h, grad_w), (chunked, chunked_h, chunked_w) = reference_and_chunked(hidden, weight, labels, chunk_rows)
    torch.testing.assert_close(chunked, loss)
    torch.testing.assert_close(chunked_h, grad_h)
    torch.testing.assert_close(chunked_w, grad_w)
    assert chunked_h.dtype == hidden.dtype


def test_bfloat16_weight_runs_the_product_in_bfloat16_like_autocast():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=generator)
    weight = torch.randn(300, 32, generator=generator).bfloat16()
    labels = torch.randint(0, 300, (64,), generator=generator)
    (loss, grad_h, grad_w), (chunked, chunked_h, chunked_w) = reference_and_chunked(hidden, weight, labels, 10)
    torch.testing.assert_close(chunked, loss)
    torch.testing.assert_close(chunked_h, grad_h, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(chunked_w.float(), grad_w.float(), atol=2e-3, rtol=2e-2)
    assert chunked_h.dtype == torch.float32 and chunked_w.dtype == torch.bfloat16


def test_a_bias_gets_the_gradient_of_the_full_logits():
    generator = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(23, 16, generator=generator), torch.randn(40, 16, generator=generator)
    bias, labels = torch.randn(40, generator=generator), torch.randint(0, 40, (23,), generator=generator)
    results = []
    for loss_of in (
        lambda h, w, b: F.cross_entropy(F.linear(h, w, b), labels),
        lambda h, w, b: linear_cross_entropy(h, w, labels, b, chunk_rows=5),
    ):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        loss = loss_of(h, w, b)
        (loss * 2.0).backward()
        results.append((loss.detach(), h.grad, w.grad, b.grad))
    for chunked, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(chunked, reference)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        linear_cross_entropy(torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        linear_cross_entropy(torch.zeros(0, 8), torch.zeros(10, 8), torch.zeros(0, dtype=torch.long))
