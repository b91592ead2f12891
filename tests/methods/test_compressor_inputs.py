"""Compressors refuse what they cannot compress with a message that says what to pass, and keep what they can.

Rows of docs/RELIABILITY.md, on the tiny random Llama of ``comprexit_rag.testing``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"


import pytest
import torch

from comprexit_rag import (
    Backbone,
    ComprExITCompressor,
    ComprExITHead,
    InvalidInputError,
)
from comprexit_rag.methods.comi import COMIMerger
from comprexit_rag.testing import CONTROL, LONE_SURROGATE, long_document


@pytest.fixture(scope="module")
def compressor(tiny_backbone: Backbone) -> ComprExITCompressor:
    torch.manual_seed(1)
    return ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (None, "got NoneType"),
        (b"raw bytes", "decode them first"),
        ({"text": "a dict"}, "got dict"),
        ([None], "Passage 0 is a NoneType"),
        (["fine", 3], "Passage 1 is a int"),
        ([""], "empty or whitespace"),
        (["ok", " \t\n\u3000 "], "Passage 1 is empty or whitespace"),
        ([LONE_SURROGATE], "not valid Unicode"),
    ],
)
def test_compressor_rejects_bad_texts(compressor, texts, message):
    with pytest.raises(InvalidInputError, match=message):
        compressor.compress(texts)


@pytest.mark.parametrize("ratio", [0, -4, 2.5, True, "4", 129])
def test_compressor_rejects_bad_ratio(compressor, ratio):
    with pytest.raises(InvalidInputError, match="ratio"):
        compressor.compress(["A passage."], ratio=ratio)
    with pytest.raises(InvalidInputError, match="ratio"):
        compressor.compress([], ratio=ratio)  # checked even with nothing to compress


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_compressor_rejects_bad_batch_size(compressor, tiny_backbone, batch_size):
    with pytest.raises(InvalidInputError, match="batch_size"):
        compressor.compress(["A passage."], batch_size=batch_size)
    with pytest.raises(InvalidInputError, match="batch_size"):
        ComprExITCompressor(tiny_backbone, compressor.head, batch_size=batch_size)


def test_compressor_keeps_control_characters(compressor, tiny_backbone):
    soft = compressor.compress([CONTROL, "\x01\x02\x03"], ratio=4)
    tokens = [len(ids) for ids in tiny_backbone.tokenize([CONTROL, "\x01\x02\x03"])]
    assert soft.token_counts.tolist() == tokens
    assert soft.slot_counts.tolist() == [compressor.config.slots_for(n, 4) for n in tokens]
    assert torch.isfinite(soft.slots).all()


def test_200k_character_document_is_compressed_in_full_segment_by_segment(compressor, tiny_backbone, monkeypatch):
    text = long_document(200_000)
    token_ids = tiny_backbone.tokenize([text])[0]
    config = compressor.config
    shapes = []
    real = tiny_backbone.hidden_states

    def recording(input_ids, attention_mask):
        shapes.append(tuple(input_ids.shape))
        return real(input_ids, attention_mask)

    monkeypatch.setattr(tiny_backbone, "hidden_states", recording)
    soft = compressor.compress([text], ratio=4, batch_size=8, show_progress=False)
    monkeypatch.undo()

    segments = -(-len(token_ids) // config.segment_length)
    full, rest = divmod(len(token_ids), config.segment_length)
    assert len(token_ids) > 30_000 and segments > 70
    assert soft.token_counts.tolist() == [len(token_ids)]  # every token counted: nothing truncated
    assert soft.num_slots == full * config.slots_for(config.segment_length, 4) + config.slots_for(rest, 4)
    assert torch.isfinite(soft.slots).all()
    # Memory is bounded by one batch of segments, never by the document's length.
    assert sum(shape[0] for shape in shapes) == segments
    assert max(shape[0] for shape in shapes) <= 8 and max(shape[1] for shape in shapes) <= config.segment_length + 1
    # The last slots are those of the document's tail: the end of the text was compressed too.
    tail = token_ids[full * config.segment_length :]
    tail_slots = compressor.compress_token_ids([tail], ratio=4).passage(0)
    torch.testing.assert_close(soft.passage(0)[-tail_slots.shape[0] :], tail_slots, atol=1e-4, rtol=1e-4)


def test_comi_refuses_a_question_that_does_not_fit_with_a_segment(tiny_backbone):
    from comprexit_rag.methods.comi import COMICompressor

    comi = COMICompressor(tiny_backbone, COMIMerger.for_backbone(tiny_backbone))
    question = "Why " + "very " * 5000 + "long?"
    with pytest.raises(InvalidInputError, match=r"does not fit the backbone.*at most 4096\. Shorten the question"):
        comi.compress(["A passage."], query=question)
    fits = "Why " + "very " * 3000 + "long?"  # about 3,000 tokens: fits next to a short passage
    assert len(comi.compress(["A passage."], query=fits)) == 1
