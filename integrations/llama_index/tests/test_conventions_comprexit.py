"""LlamaIndex conventions (issue 20): LLM events and spans, the response synthesizer seam, the
warning for a text LLM, async streaming, unknown arguments, zero-argument construction and the
embedder's truncation warning, with real llama-index-core objects."""

from __future__ import annotations

import asyncio
import logging

import pytest
from llama_index.core import Settings
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import MockLLM
from llama_index.postprocessor.comprexit import (
    EMPTY_RESPONSE,
    ComprExITEmbedding,
    ComprExITLLM,
    ComprExITNodePostprocessor,
    ComprExITQueryEngine,
    ComprExITSynthesizer,
    build_query_engine,
)

from comprexit_rag import defaults
from comprexit_rag.errors import InvalidInputError


class Recorder(BaseEventHandler):
    events: list

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


@pytest.fixture
def instrumented():
    """An event recorder and a span handler on the root dispatcher, removed afterwards."""
    root = get_dispatcher()
    recorder, spans = Recorder(events=[]), SimpleSpanHandler()
    root.add_event_handler(recorder)
    root.add_span_handler(spans)
    yield recorder, spans
    root.event_handlers.remove(recorder)
    root.span_handlers.remove(spans)


@pytest.fixture
def postprocessor(tiny_compressor, tmp_path) -> ComprExITNodePostprocessor:
    return ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")


def test_the_engine_emits_llm_events_and_spans_with_slot_counts(
    hotpot_index, hotpot_examples, postprocessor, instrumented
):
    recorder, spans = instrumented
    debug = LlamaDebugHandler()
    engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=3)
    engine.callback_manager = CallbackManager([debug])
    engine.llm.callback_manager = engine.callback_manager
    response = engine.query(hotpot_examples[0].question)

    [(start, end)] = debug.get_llm_inputs_outputs()
    assert start.payload[EventPayload.PROMPT] == hotpot_examples[0].question  # the question only: no passage text
    counts = start.payload[EventPayload.ADDITIONAL_KWARGS]
    assert counts["slots"] == response.metadata["slots"] > 0 and counts["context_tokens"] > counts["slots"]
    assert end.payload[EventPayload.COMPLETION].text == response.response

    started = [e for e in recorder.events if isinstance(e, LLMCompletionStartEvent)]
    ended = [e for e in recorder.events if isinstance(e, LLMCompletionEndEvent)]
    assert len(started) == len(ended) == 1 and started[0].additional_kwargs["slots"] == counts["slots"]
    assert any(span.id_.startswith("ComprExITLLM.complete") for span in spans.completed_spans)


def test_settings_callback_manager_reaches_the_engine(hotpot_index, hotpot_examples, postprocessor):
    debug = LlamaDebugHandler()
    previous = Settings.callback_manager
    Settings.callback_manager = CallbackManager([debug])
    try:
        engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=2)
        engine.query(hotpot_examples[1].question)
    finally:
        Settings.callback_manager = previous
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 1


def test_a_standard_engine_reads_the_slots_through_the_synthesizer(
    hotpot_index, hotpot_examples, postprocessor, caplog
):
    question = hotpot_examples[0].question
    ours = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=4).query(question)
    synthesizer = ComprExITSynthesizer(postprocessor, max_new_tokens=4)
    with caplog.at_level(logging.WARNING):
        engine = hotpot_index.as_query_engine(
            llm=synthesizer.llm,
            similarity_top_k=2,
            response_synthesizer=synthesizer,
            node_postprocessors=[postprocessor],
        )
        response = engine.query(question)
    assert isinstance(response, Response) and response.response == ours.response
    assert response.metadata["store_hits"] == 2 and response.metadata["store_misses"] == 0
    assert "text LLM" not in caplog.text

    previous = Settings._llm
    Settings.llm = ComprExITLLM(ours_reader := postprocessor_reader(postprocessor), max_new_tokens=4)
    try:  # with Settings.llm set, the plain as_query_engine(...) call of the LlamaIndex docs works
        plain = hotpot_index.as_query_engine(
            similarity_top_k=2, response_synthesizer=synthesizer, node_postprocessors=[postprocessor]
        )
        assert plain.query(question).response == ours.response
    finally:
        Settings._llm = previous
    assert ours_reader.backbone is postprocessor.compressor.backbone

    with pytest.raises(InvalidInputError, match="not text chunks"):
        synthesizer.get_response(question, ["some text"])
    assert synthesizer.synthesize(question, []).response == EMPTY_RESPONSE


def postprocessor_reader(postprocessor: ComprExITNodePostprocessor):
    return defaults.reader_for(postprocessor.compressor.backbone)


def test_a_text_llm_engine_warns_once_that_the_slots_are_not_read(hotpot_index, hotpot_examples, postprocessor, caplog):
    engine = hotpot_index.as_query_engine(
        llm=MockLLM(max_tokens=4), similarity_top_k=2, node_postprocessors=[postprocessor]
    )
    with caplog.at_level(logging.WARNING):
        engine.query(hotpot_examples[0].question)
        engine.query(hotpot_examples[1].question)
    assert caplog.text.count("reads the nodes' full text, not the slots") == 1
    assert "ComprExITSynthesizer" in caplog.text


def test_aquery_streams_asynchronously(hotpot_index, hotpot_examples, postprocessor):
    question = hotpot_examples[2].question
    expected = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=4).query(question)
    streaming = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=4, streaming=True)

    async def collect() -> tuple[AsyncStreamingResponse, str]:
        response = await streaming.aquery(question)
        return response, "".join([piece async for piece in response.async_response_gen()])

    response, text = asyncio.run(collect())
    assert isinstance(response, AsyncStreamingResponse) and text == expected.response
    assert response.metadata["slots"] == expected.metadata["slots"]

    synthesizer = ComprExITSynthesizer(postprocessor, max_new_tokens=4, streaming=True)
    nodes = hotpot_index.as_retriever(similarity_top_k=2).retrieve(question)

    async def synthesize() -> str:
        response = await synthesizer.asynthesize(question, nodes)
        assert isinstance(response, AsyncStreamingResponse)
        return "".join([piece async for piece in response.async_response_gen()])

    assert asyncio.run(synthesize()) == expected.response


def test_unknown_arguments_raise(tiny_compressor, hotpot_index, postprocessor):
    with pytest.raises(InvalidInputError, match=r"unknown argument\(s\) top_n"):
        ComprExITNodePostprocessor(tiny_compressor, top_n=3)
    with pytest.raises(InvalidInputError, match=r"unknown argument\(s\) response_mode"):
        ComprExITQueryEngine(hotpot_index.as_retriever(), postprocessor, response_mode="compact")
    with pytest.raises(InvalidInputError, match=r"unknown argument\(s\) temperature"):
        ComprExITLLM(defaults.reader_for(tiny_compressor.backbone), temperature=0.1)


def test_the_embedding_warns_when_it_truncates(embed_model, caplog):
    with caplog.at_level(logging.WARNING):
        embed_model.get_text_embedding_batch(["word " * 600, "short"])
    assert "1 text(s) are longer than the embedder's 256-token window" in caplog.text
    assert embed_model.model is defaults.default_embedder() is ComprExITEmbedding().model  # one copy per process


@pytest.mark.slow
def test_zero_argument_components_share_one_default_backbone(hotpot_index, hotpot_examples):
    postprocessor = ComprExITNodePostprocessor()
    synthesizer = ComprExITSynthesizer(postprocessor, max_new_tokens=6)
    assert postprocessor.compressor is defaults.default_compressor()
    assert postprocessor.ratio == postprocessor.compressor.config.ratio
    assert synthesizer.postprocessor.compressor.backbone is defaults.default_backbone()
    assert ComprExITLLM().reader is defaults.default_reader() is ComprExITSynthesizer()._llm.reader
    engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=6)
    response = engine.query(hotpot_examples[0].question)
    assert engine.reader is defaults.default_reader() and response.response and response.response != EMPTY_RESPONSE
