"""Tests of the reader adapter (``comprexit_rag.reading.adapter``): a peft LoRA on the reading pass only."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel

from comprexit_rag import ComprExITHead, Reader, SoftContext
from comprexit_rag.backbone import Backbone, autocast_for
from comprexit_rag.errors import AdapterMismatchError, BackboneMismatchError, CheckpointError, InvalidInputError
from comprexit_rag.methods.base import head_digest
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.reading.adapter import ADAPTER_DIR, PEFT_WEIGHTS_NAME, ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.reading.pairing import FROZEN_READER
from comprexit_rag.reading.widening import widen
from comprexit_rag.slots.service import SlotService

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def randomised(adapter: ReaderAdapter, seed: int = 1) -> ReaderAdapter:
    """LoRA B starts at zero (the adapter is then a no-op): give every weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    adapter.refresh_digest()
    return adapter


def logits(backbone, adapter: ReaderAdapter | None = None, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad(), backbone.lock:
        if adapter is None:
            return backbone.model(input_ids=IDS).logits
        with adapter.reading(slot_mask):
            return backbone.model(input_ids=IDS).logits


@pytest.mark.parametrize("scope", ["all", "slots"])
def test_the_pass_that_feeds_the_head_never_sees_the_adapter(fresh_tiny_backbone, scope):
    backbone = fresh_tiny_backbone
    mask = torch.ones_like(IDS)
    before = [h.clone() for h in backbone.hidden_states(IDS, mask)]
    frozen = logits(backbone)
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope=scope)))
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.hidden_states(IDS, mask), strict=True))
    assert torch.equal(logits(backbone), frozen)  # off outside reading()
    assert not torch.allclose(logits(backbone, adapter, torch.ones_like(IDS, dtype=torch.bool)), frozen)
    assert torch.equal(logits(backbone), frozen)  # and off again after it


def test_slot_scope_changes_slot_positions_only(fresh_tiny_backbone):
    backbone = fresh_tiny_backbone
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope="slots")))
    frozen = logits(backbone)
    slots = torch.zeros_like(IDS, dtype=torch.bool)
    slots[0, 2:4] = True
    adapted = logits(backbone, adapter, slots)
    # Positions before the first slot attend to no adapted position: exactly the frozen reader there.
    assert torch.equal(adapted[0, :2], frozen[0, :2])
    assert not torch.allclose(adapted[0, 2:], frozen[0, 2:])
    # Without a mask (decoding steps, all text) a slots-scope adapter stays off.
    with torch.no_grad(), backbone.lock, adapter.reading():
        assert torch.equal(backbone.model(input_ids=IDS).logits, frozen)


def test_slot_scope_reads_text_and_closed_book_exactly_like_the_frozen_reader(fresh_tiny_backbone):
    backbone = fresh_tiny_backbone
    frozen = Reader(backbone, adapter=None, max_new_tokens=6)
    expected = frozen.generate(["Who built it?", "When?"], ["Gustave Eiffel built the tower.", None])
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope="slots")))
    adapted = Reader(backbone, max_new_tokens=6)
    assert adapted.adapter is adapter  # the attached adapter is the default
    assert adapted.generate(["Who built it?", "When?"], ["Gustave Eiffel built the tower.", None]) == expected
    slots = torch.randn(5, backbone.hidden_size)
    assert adapted.generate("Who built it?", slots) != frozen.generate("Who built it?", slots)


def test_merged_reading_equals_the_lora_path_and_leaves_the_frozen_weights_alone(fresh_tiny_backbone):
    backbone = fresh_tiny_backbone
    frozen = logits(backbone)
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4)))
    frozen_weights = {name: p.clone() for name, p in backbone.model.named_parameters() if "lora" not in name}
    adapter.merged_reading = False
    lora_path = logits(backbone, adapter)
    adapter.merged_reading = None  # the default: the tiny model's copy is small, so it merges
    merged = logits(backbone, adapter)
    torch.testing.assert_close(merged, lora_path, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged, frozen)
    assert torch.equal(logits(backbone), frozen)
    after = dict(backbone.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen_weights.items())
    # New weights (loaded or changed in place and refreshed) make a new merged copy.
    randomised(adapter, seed=2)
    adapter.merged_reading = False
    changed = logits(backbone, adapter)
    adapter.merged_reading = True
    torch.testing.assert_close(logits(backbone, adapter), changed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, merged)


def test_gradients_reach_the_adapter_through_a_reading_pass(fresh_tiny_backbone):
    backbone = fresh_tiny_backbone
    adapter = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4)).train()
    with backbone.lock, adapter.reading():
        loss = backbone.model(input_ids=IDS).logits.float().square().mean()
    loss.backward()  # after reading() exited: peft's disable must not have cut the graph
    b_grads = [p.grad for name, p in named_lora(adapter) if "lora_B" in name]
    assert all(g is not None and g.abs().sum() > 0 for g in b_grads)
    assert not any(
        p.requires_grad for p in backbone.model.parameters() if all(p is not q for q in adapter.parameters())
    )


@pytest.mark.parametrize("scope", ["all", "slots"])
def test_switching_two_adapters_keeps_requires_grad_and_equals_peft_switching(fresh_tiny_backbone, scope):
    """reading() sets only the flag peft's forward reads (peft's enable_adapters also walks every weight
    to set requires_grad): the same passes as switching with peft, each adapter's own, in any order."""
    backbone = fresh_tiny_backbone
    first = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope=scope), "first"), 1)
    second = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope=scope), "second"), 2)
    first.train()
    slots = torch.ones_like(IDS, dtype=torch.bool)
    slots[0, :2] = False

    def peft_switched(adapter: ReaderAdapter) -> torch.Tensor:
        for layer in adapter._layers:
            layer.set_adapter(adapter.name)
            layer.enable_adapters(True)
        adapter._slot_mask = slots[..., None]
        try:
            with torch.no_grad():
                return backbone.model(input_ids=IDS).logits
        finally:
            adapter._slot_mask, adapter._slot_mask_as = None, {}
            for layer in adapter._layers:
                layer.enable_adapters(False)

    expected = {adapter.name: peft_switched(adapter) for adapter in (first, second)}
    first.train(), second.eval()
    second.merged_reading = False  # the LoRA path, as above (merged weights differ by rounding)
    for adapter in (first, second, second, first):
        assert torch.equal(logits(backbone, adapter, slots), expected[adapter.name])
        assert all(layer.disable_adapters for layer in adapter._layers)  # off again, as peft sees it
        assert all(p.requires_grad for p in first.parameters())
        assert not any(p.requires_grad for p in second.parameters())
    assert torch.equal(logits(backbone), backbone.model(input_ids=IDS).logits)


def test_under_autocast_lora_layers_read_their_low_precision_input_uncast(fresh_tiny_backbone):
    # peft casts a LoRA layer's input to its float32 weights; under autocast that cast only copies the
    # activations (the matmul runs in bfloat16 anyway). Outside autocast the cast is needed and kept.
    backbone = fresh_tiny_backbone
    backbone.model.to(torch.bfloat16)
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4))).train()
    seen: list[torch.dtype] = []
    lora_a = next(module for name, module in backbone.model.named_modules() if name.endswith(f"lora_A.{adapter.name}"))
    lora_a.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))

    def loss() -> torch.Tensor:
        with backbone.lock, adapter.reading():
            return backbone.model(input_ids=IDS).logits.float().square().mean()

    with autocast_for(backbone):
        autocast_loss = loss()
    eager_loss = loss()
    assert seen == [torch.bfloat16, torch.float32]
    autocast_loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.parameters())
    assert torch.allclose(autocast_loss, eager_loss, rtol=0.05)


def named_lora(adapter: ReaderAdapter) -> list[tuple[str, torch.nn.Parameter]]:
    ids = {id(p) for p in adapter.parameters()}
    return [(name, p) for name, p in adapter.backbone.model.named_parameters() if id(p) in ids]


def test_saved_adapter_is_a_peft_checkpoint_and_round_trips(fresh_tiny_backbone, make_tiny_backbone, tmp_path):
    backbone = fresh_tiny_backbone
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4)))
    adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4

    expected = logits(backbone, adapter)
    # peft itself loads it onto a fresh copy of the model, with the same outputs.
    plain = PeftModel.from_pretrained(make_tiny_backbone().model, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=IDS).logits, expected, atol=1e-5)
    # And so does this library, onto another backbone object.
    other = make_tiny_backbone()
    loaded = ReaderAdapter.from_pretrained(tmp_path / "adapter", other)
    assert loaded.digest == adapter.digest and loaded.config == adapter.config
    assert torch.allclose(logits(other, loaded), expected, atol=1e-6)

    adapter.save_pretrained(tmp_path / "half", dtype=torch.bfloat16)
    size = (tmp_path / "half" / PEFT_WEIGHTS_NAME).stat().st_size
    assert size < 0.6 * (tmp_path / "adapter" / PEFT_WEIGHTS_NAME).stat().st_size


def test_a_widened_adapter_reads_as_before_and_trains_its_new_components(fresh_tiny_backbone, tmp_path):
    backbone = fresh_tiny_backbone
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, alpha=8.0)))
    expected, narrow = logits(backbone, adapter), adapter.num_parameters()
    # Another alpha / rank scaling (8 / 4 -> 8 / 12): the copied B is rescaled, so the delta is the same.
    wide = widen(adapter, ReaderAdapterConfig(rank=12, alpha=8.0)).train()
    assert wide.num_parameters() == 3 * narrow and backbone.reader_adapters == {wide.name: wide}
    assert torch.allclose(logits(backbone, wide), expected, atol=1e-5)
    # The new components start with B = 0 and a random A, so B's new columns get gradients at once.
    with backbone.lock, wide.reading():
        backbone.model(input_ids=IDS).logits.sum().backward()
    layer = wide.lora_layers[0]
    assert layer.lora_B[wide.name].weight.grad[:, 4:].abs().sum() > 0
    saved = json.loads((wide.save_pretrained(tmp_path / "wide") / "adapter_config.json").read_text())
    assert saved["r"] == 12
    with pytest.raises(InvalidInputError, match="only be widened to a higher rank"):
        widen(wide, ReaderAdapterConfig(rank=12))
    with pytest.raises(InvalidInputError, match="keeps its target modules and scope"):
        widen(wide, ReaderAdapterConfig(rank=16, scope="slots"))


def test_the_shipped_adapter_widened_on_the_real_backbone_answers_as_before():
    backbone = Backbone.from_pretrained(device="cpu")  # its own copy: the shared one keeps the shipped adapter
    compressor = ComprExITCompressor.from_pretrained(backbone=backbone)
    passage = "The Eiffel Tower was built by Gustave Eiffel's company from 1887 to 1889."
    question = "Whose company built the Eiffel Tower?"
    expected = Reader(backbone).generate(question, passage)  # the raw text, read through the shipped adapter
    wide = widen(compressor.reader_adapter, ReaderAdapterConfig(rank=32, alpha=64.0))
    assert wide.num_parameters() == 2 * 4_884_480
    assert Reader(backbone, adapter=wide).generate(question, passage) == expected
    # Slots stay paired with the adapter they were trained with: a widened one is another adapter.
    with pytest.raises(AdapterMismatchError):
        Reader(backbone, adapter=wide).generate(question, compressor.compress([passage], ratio=4))


def test_bad_adapter_files_raise_typed_errors(fresh_tiny_backbone, make_tiny_backbone, tmp_path):
    adapter = randomised(ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=4)))
    good = adapter.save_pretrained(tmp_path / "good")
    target = make_tiny_backbone()

    truncated = shutil.copytree(good, tmp_path / "truncated")
    weights = truncated / PEFT_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ReaderAdapter.from_pretrained(truncated, target)

    corrupt = shutil.copytree(good, tmp_path / "corrupt")
    (corrupt / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ReaderAdapter.from_pretrained(corrupt, target)

    with pytest.raises(CheckpointError, match="not a reader adapter directory"):
        ReaderAdapter.from_pretrained(tmp_path, target)

    foreign = shutil.copytree(good, tmp_path / "foreign")
    metadata = json.loads((foreign / "comprexit_adapter.json").read_text())
    metadata["backbone_fingerprint"]["hidden_size"] = 128
    (foreign / "comprexit_adapter.json").write_text(json.dumps(metadata))
    with pytest.raises(BackboneMismatchError):
        ReaderAdapter.from_pretrained(foreign, target)

    with pytest.raises(InvalidInputError, match="rank"):
        ReaderAdapterConfig(rank=0)
    with pytest.raises(InvalidInputError, match="scope"):
        ReaderAdapterConfig(scope="answers")


def head_with_adapter(backbone, directory, head: ComprExITHead | None = None, seed: int = 1) -> None:
    head = head if head is not None else ComprExITHead.for_backbone(backbone, ratio=4)
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4)), seed)
    head.save_pretrained(directory)
    adapter.paired_head = head_digest(head)
    adapter.save_pretrained(directory / ADAPTER_DIR)


def test_a_head_checkpoint_brings_its_adapter_and_slots_demand_it(fresh_tiny_backbone, make_tiny_backbone, tmp_path):
    head_with_adapter(fresh_tiny_backbone, tmp_path / "head")
    backbone = make_tiny_backbone()
    plain = ComprExITCompressor(backbone, ComprExITHead.from_pretrained(tmp_path / "head"))
    compressor = ComprExITCompressor.from_pretrained(tmp_path / "head", backbone)
    assert compressor.reader_adapter is not None
    # The slots are the head's alone (the pass that feeds it runs without the adapter); the mark says who reads them.
    assert compressor.fingerprint == plain.fingerprint

    soft = compressor.compress(["Gustave Eiffel's company built the tower."], ratio=4)
    assert soft.reader_adapter == compressor.reader_adapter.digest
    assert isinstance(Reader(backbone, max_new_tokens=3).generate("Who built it?", soft), str)
    with pytest.raises(AdapterMismatchError, match="this reader has none"):
        Reader(backbone, adapter=None).generate("Who built it?", soft)
    assert isinstance(soft.select([0]), SoftContext) and soft.select([0]).reader_adapter == soft.reader_adapter

    frozen_slots = plain.compress(["Gustave Eiffel's company built the tower."], ratio=4)
    with pytest.raises(AdapterMismatchError, match="frozen reader"):
        Reader(backbone).generate("Who built it?", frozen_slots)
    assert isinstance(Reader(backbone, adapter=None, max_new_tokens=3).generate("Who built it?", frozen_slots), str)

    other_head = ComprExITHead.for_backbone(backbone, ratio=4)
    with pytest.raises(AdapterMismatchError, match="was trained with module"):
        ComprExITCompressor(backbone, other_head, reader_adapter=compressor.reader_adapter)


def test_a_store_keeps_a_heads_slots_for_an_adapter_tuned_again_with_the_head_frozen(
    fresh_tiny_backbone, make_tiny_backbone, tmp_path
):
    texts = ["Gustave Eiffel's company built the tower.", "The bridge opened in 1932."]
    head = ComprExITHead.for_backbone(fresh_tiny_backbone, ratio=4)
    head_with_adapter(fresh_tiny_backbone, tmp_path / "first", head, seed=1)
    head_with_adapter(fresh_tiny_backbone, tmp_path / "retuned", head, seed=2)  # the same head, another adapter
    first = ComprExITCompressor.from_pretrained(tmp_path / "first", make_tiny_backbone())
    retuned = ComprExITCompressor.from_pretrained(tmp_path / "retuned", make_tiny_backbone())
    assert first.reader_adapter.digest != retuned.reader_adapter.digest
    assert first.fingerprint == retuned.fingerprint

    written = SlotService(first, tmp_path / "store").lookup(texts, ratio=4)
    read = SlotService(retuned, tmp_path / "store").lookup(texts, ratio=4)
    assert (written.misses, read.hits, read.misses) == (2, 2, 0)  # kept, not compressed again
    fresh = retuned.compress(texts, ratio=4)
    for kept, made in zip(read.slots, fresh.passages(), strict=True):
        torch.testing.assert_close(kept, made.half().float())  # what the retuned compressor makes itself
    # Read back, the slots are marked for the adapter of the compressor that reads them.
    assert read.context.reader_adapter == retuned.reader_adapter.digest
    assert written.context.reader_adapter == first.reader_adapter.digest
    assert isinstance(
        Reader(retuned.backbone, adapter=retuned.reader_adapter, max_new_tokens=2).generate(
            "Who built it?", read.context.select([0])
        ),
        str,
    )
    with pytest.raises(AdapterMismatchError):
        Reader(first.backbone, adapter=first.reader_adapter).generate("Who built it?", read.context.select([0]))
    # An adapter trained with another head still never reaches these slots: the pair is refused.
    another_head = ComprExITHead.for_backbone(retuned.backbone, ratio=4)
    with pytest.raises(AdapterMismatchError, match="was trained with module"):
        ComprExITCompressor(retuned.backbone, another_head, reader_adapter=retuned.reader_adapter)


def test_several_attached_adapters_must_be_chosen(fresh_tiny_backbone):
    first = ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=4), name="first")
    ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=4), name="second")
    with pytest.raises(InvalidInputError, match="several reader adapters"):
        Reader(fresh_tiny_backbone)
    assert Reader(fresh_tiny_backbone, adapter=first).adapter is first
    with pytest.raises(InvalidInputError, match="already holds"):
        ReaderAdapter.create(fresh_tiny_backbone, name="first")


def test_fresh_adapters_on_one_backbone_get_names_of_their_own(fresh_tiny_backbone):
    first = ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=4))
    second = ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=4))
    assert (first.name, second.name) == ("reader", "reader-2")
    assert fresh_tiny_backbone.reader_adapters == {"reader": first, "reader-2": second}
    assert first.state_dict().keys() == second.state_dict().keys()  # saved files do not hold the name


@pytest.mark.slow
def test_the_shipped_head_reads_through_its_adapter_on_the_real_backbone(real_backbone):
    compressor = ComprExITCompressor.from_pretrained(backbone=real_backbone)
    assert compressor.reader_adapter is not None and compressor.reader_adapter.config.scope == "all"
    passage = "The Eiffel Tower was designed and built by Gustave Eiffel's company from 1887 to 1889."
    soft = compressor.compress([passage], ratio=4)
    answer = Reader(real_backbone).generate("Whose company built the Eiffel Tower?", soft)
    assert "eiffel" in answer.lower()


def test_a_served_copy_with_the_adapter_merged_reads_like_the_adapted_reader(fresh_tiny_backbone, tmp_path):
    from transformers import AutoModelForCausalLM

    from comprexit_rag.scale.served_reader import export_served_reader

    backbone = fresh_tiny_backbone
    adapter = randomised(ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4)))
    expected = logits(backbone, adapter)
    frozen = logits(backbone)
    export_served_reader(adapter, tmp_path / "served")
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "served").eval()
    with torch.no_grad():
        assert torch.allclose(served(input_ids=IDS).logits, expected, atol=1e-4)
    assert torch.equal(logits(backbone), frozen)  # the library's backbone is untouched

    slots_only = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=4, scope="slots"), name="slots")
    with pytest.raises(InvalidInputError, match="cannot be merged"):
        export_served_reader(slots_only, tmp_path / "refused")


def test_a_reader_through_another_adapter_keeps_its_prompt_and_limit_and_is_made_once(fresh_tiny_backbone):
    adapter = ReaderAdapter.create(fresh_tiny_backbone, ReaderAdapterConfig(rank=2))
    reader = Reader(fresh_tiny_backbone, max_new_tokens=3)  # through the attached adapter
    frozen = reader.through(None)

    assert reader.adapter is adapter and reader.through(adapter) is reader
    assert frozen.adapter is None and reader.through(None) is frozen
    assert (frozen.backbone, frozen.prompt, frozen.max_new_tokens) == (reader.backbone, reader.prompt, 3)
    frozen_slots = SoftContext.from_passages(
        [torch.randn(2, fresh_tiny_backbone.hidden_size)], [8], reader_adapter=FROZEN_READER
    )
    with pytest.raises(AdapterMismatchError):
        reader.generate("Who?", frozen_slots)
    assert isinstance(frozen.generate("Who?", frozen_slots), str)
