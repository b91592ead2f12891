"""A compressor asked for a ratio its module was not trained at says so, once, and names what to load instead."""

from __future__ import annotations

import logging

import torch

from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit import MULTI_RATIO_HEAD, ComprExITCompressor, ComprExITHead
from comprexit_rag.methods.mean_pool import MeanPoolCompressor, MeanPoolHead

PASSAGE = "Town 7 lies on the river Rell and was founded by Ada7 in the year 1204."
WARNING = "was trained at ratio"


def warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if WARNING in record.getMessage()]


def comprexit(backbone, trained_ratios: list[int]) -> ComprExITCompressor:
    torch.manual_seed(0)
    return ComprExITCompressor(backbone, ComprExITHead.for_backbone(backbone, trained_ratios=trained_ratios))


def test_a_head_trained_at_4x_warns_once_per_other_ratio_and_names_the_multi_ratio_head(tiny_backbone, caplog):
    compressor = comprexit(tiny_backbone, [4])
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.methods.base"):
        compressor.compress([PASSAGE], ratio=4)
        assert warnings(caplog) == []
        compressor.compress([PASSAGE], ratio=16)
        compressor.compress([PASSAGE, PASSAGE], ratio=16)
        compressor.compress_token_ids([[1, 2, 3]], ratio=8)
    messages = warnings(caplog)
    assert len(messages) == 2
    assert "ComprExITHead was trained at ratio 4, not 16" in messages[0]
    assert f"ComprExITCompressor.from_pretrained({MULTI_RATIO_HEAD.name!r})" in messages[0]
    assert "not 8" in messages[1]


def test_a_head_trained_at_several_ratios_reads_each_without_warning(tiny_backbone, caplog):
    compressor = comprexit(tiny_backbone, [4, 8, 16])
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.methods.base"):
        for ratio in (4, 8, 16):
            compressor.compress([PASSAGE], ratio=ratio)
        compressor.compress([PASSAGE], ratio=2)
    assert [message.split(":")[0] for message in warnings(caplog)] == [
        "This ComprExITHead was trained at ratio 4 and 8 and 16, not 2"
    ]


def test_comi_records_its_ratios_and_a_module_without_a_record_never_warns(tiny_backbone, caplog):
    merger = COMIMerger.for_backbone(tiny_backbone, layer=1, segment_length=32)
    assert COMICompressor(tiny_backbone, merger).trained_ratios == merger.config.trained_ratios == [4]
    mean_pool = MeanPoolCompressor(tiny_backbone, MeanPoolHead.for_backbone(tiny_backbone))
    assert mean_pool.trained_ratios is None
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.methods.base"):
        mean_pool.compress([PASSAGE], ratio=16)
    assert warnings(caplog) == []


def test_the_shipped_heads_record_the_ratios_they_were_trained_at():
    assert ComprExITHead.from_pretrained().config.trained_ratios == [4]
    assert ComprExITHead.from_pretrained(MULTI_RATIO_HEAD.name).config.trained_ratios == [4, 8, 16]
