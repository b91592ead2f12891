"""Held-out reconstruction scores: one loss and one hit per target token, each window's in order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comprexit_rag.evaluation.reconstruction import mean_window_scores, nats_standard_error, reconstruction_scores
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.batch_layout import IGNORE_INDEX
from comprexit_rag.reading.reader import Reader
from comprexit_rag.testing import PASSAGES, passage_text


def test_scores_are_each_windows_token_losses_in_batches_of_any_size(tiny_backbone):
    reader = Reader(tiny_backbone)
    texts = [passage_text(record) for record in PASSAGES[:5]]
    windows = tiny_backbone.tokenize(texts)
    contexts = [texts[1], None, texts[0], texts[3], None]  # text and no context, in one batch
    scores = reconstruction_scores(reader, windows, contexts, batch_size=2)
    assert [losses.shape[0] for losses, _ in scores] == [len(ids) + 1 for ids in windows]  # + the end token
    stop = answer_end_token_id(tiny_backbone.tokenizer)
    for ids, context, (losses, hits) in zip(windows, contexts, scores, strict=True):
        alone = reader.build_inputs(
            [""], [context], [[*ids, stop]], prompt=ReconstructionPrompt(), padding_side="right"
        )
        with torch.no_grad():
            logits = tiny_backbone.model(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask).logits[
                0, :-1
            ]
        labels = alone.labels[0, 1:]
        logits, labels = logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX]
        expected = F.cross_entropy(logits.float(), labels, reduction="none")
        torch.testing.assert_close(losses, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(hits, logits.argmax(-1) == labels)


def test_means_weigh_every_token_alike_with_or_without_the_end_token():
    scores = [
        (torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, False, True])),
        (torch.tensor([4.0, 0.0]), torch.tensor([True, True])),
    ]
    assert mean_window_scores(scores) == pytest.approx((16.0 / 5, 4 / 5))
    assert mean_window_scores(scores, with_end_token=False) == pytest.approx((7.0 / 3, 2 / 3))


def window(losses: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(losses), torch.ones(len(losses), dtype=torch.bool)


def test_the_standard_error_of_windows_of_one_length_is_that_of_their_means():
    scores = [window([1.0, 3.0]), window([0.0, 0.0]), window([5.0, 7.0]), window([2.0, 2.0])]
    means = torch.tensor([2.0, 0.0, 6.0, 2.0], dtype=torch.float64)
    assert nats_standard_error(scores) == pytest.approx(float(means.std() / 2))


def test_the_standard_error_counts_windows_not_tokens():
    # Tokens that vary inside windows whose totals fit their lengths exactly: no spread between windows.
    scores = [window([0.0, 4.0]), window([2.0, 2.0, 0.0, 4.0]), window([1.0, 3.0, 2.0])]
    assert nats_standard_error(scores) == pytest.approx(0.0, abs=1e-12)
    # Without the end token, the last loss of each window drops out of both totals and sizes.
    assert nats_standard_error(scores, with_end_token=False) > 0


def test_the_standard_error_needs_two_windows():
    with pytest.raises(ValueError, match="two windows"):
        nats_standard_error([window([1.0, 2.0])])
