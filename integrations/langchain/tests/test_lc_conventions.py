"""LangChain conventions (issue 20): zero-argument construction, generation options through
``bind`` / ``with_config`` / configurable fields, unknown arguments, the ``context`` key, no
accidental closed-book answers, ``StrOutputParser`` after ``return_stats`` and the Embeddings class."""

from __future__ import annotations

import logging

import pytest
from comprexit_rag import defaults
from comprexit_rag.errors import InvalidInputError
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import ConfigurableField, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_comprexit import (
    EMPTY_RESPONSE,
    ComprExITDocumentCompressor,
    ComprExITEmbeddings,
    ComprExITReader,
    ComprExITRetriever,
)


@pytest.fixture
def reader(tiny_pipeline) -> ComprExITReader:
    return ComprExITReader.from_pipeline(tiny_pipeline, max_new_tokens=8)


@pytest.fixture
def question_and_docs(tiny_pipeline, hotpot) -> tuple[str, list[Document]]:
    question = hotpot[0].question
    return question, ComprExITRetriever.from_pipeline(tiny_pipeline, k=2).invoke(question)


def _tokens(reader: ComprExITReader, answer: str) -> int:
    return len(reader.reader.backbone.tokenizer(answer, add_special_tokens=False)["input_ids"])


def test_generation_options_through_bind_with_config_and_configurable_fields(reader, question_and_docs, monkeypatch):
    question, docs = question_and_docs
    seen: list[int] = []
    generate = reader.reader.generate

    def recording_generate(*args, max_new_tokens=None, **kwargs):
        seen.append(max_new_tokens)
        return generate(*args, max_new_tokens=max_new_tokens, **kwargs)

    monkeypatch.setattr(reader.reader, "generate", recording_generate)
    inputs = {"question": question, "documents": docs}
    reader.invoke(inputs)
    reader.bind(max_new_tokens=2).invoke(inputs)
    reader.with_config(configurable={"max_new_tokens": 3}).invoke(inputs)
    configurable = reader.configurable_fields(max_new_tokens=ConfigurableField(id="answer_length"))
    configurable.with_config(configurable={"answer_length": 4}).invoke(inputs)
    reader.bind(max_new_tokens=5).batch([inputs, inputs])
    assert seen == [8, 2, 3, 4, 5]
    streamed = "".join(reader.bind(max_new_tokens=1).stream(inputs))
    assert _tokens(reader, streamed) <= 1

    with pytest.raises(InvalidInputError, match=r"unknown option.*stop.*max_new_tokens"):
        reader.bind(stop=["\n"]).invoke(inputs)
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        reader.bind(max_new_tokens=0).invoke(inputs)


def test_unknown_constructor_arguments_raise(tiny_pipeline):
    with pytest.raises(InvalidInputError, match=r"unknown argument.*max_tokens.*max_new_tokens"):
        ComprExITReader.from_pipeline(tiny_pipeline, max_tokens=10)
    with pytest.raises(InvalidInputError, match=r"unknown argument.*top_n"):
        ComprExITDocumentCompressor.from_pipeline(tiny_pipeline, top_n=3)
    with pytest.raises(InvalidInputError, match=r"unknown argument.*top_k"):
        ComprExITRetriever.from_pipeline(tiny_pipeline, top_k=3)


def test_the_context_key_is_read_and_a_missing_key_raises(reader, tiny_pipeline, question_and_docs):
    question, docs = question_and_docs
    retriever = ComprExITRetriever.from_pipeline(tiny_pipeline, k=2)
    chain = {"context": retriever, "question": RunnablePassthrough()} | reader.model_copy(update={"return_stats": True})
    output = chain.invoke(question)
    assert output.response_metadata["comprexit_stats"]["documents"] == 2  # not closed-book
    assert output.content == reader.invoke({"question": question, "documents": docs})

    wrong = {"passages": retriever, "question": RunnablePassthrough()} | reader
    with pytest.raises(InvalidInputError, match=r"no documents.*'passages'"):
        wrong.invoke(question)


def test_no_documents_answers_empty_response_like_llama_index(reader, caplog):
    with caplog.at_level(logging.WARNING):
        assert reader.invoke({"question": "Who?", "documents": []}) == EMPTY_RESPONSE
    assert "no document with content" in caplog.text
    assert "".join(reader.stream({"question": "Who?", "context": [Document(page_content=" ")]})) == EMPTY_RESPONSE
    from llama_index.postprocessor.comprexit import EMPTY_RESPONSE as LLAMA_EMPTY_RESPONSE

    assert EMPTY_RESPONSE == LLAMA_EMPTY_RESPONSE


def test_text_prompts_are_refused_with_the_way_to_build_the_chain(reader):
    prompt = PromptTemplate.from_template("Answer: {question}")
    with pytest.raises(InvalidInputError, match=r"text prompt cannot carry.*RunnablePassthrough"):
        (prompt | reader).invoke({"question": "Who?"})
    with pytest.raises(InvalidInputError, match="got str"):
        reader.invoke("Who?")


def test_return_stats_is_a_message_a_str_output_parser_reads(reader, question_and_docs):
    question, docs = question_and_docs
    inputs = {"question": question, "documents": docs}
    with_stats = reader.model_copy(update={"return_stats": True})
    message = with_stats.invoke(inputs)
    assert isinstance(message, AIMessage) and with_stats.OutputType is AIMessage
    stats = message.response_metadata["comprexit_stats"]
    assert "ratio" not in stats and stats["achieved_ratio"] == pytest.approx(stats["context_tokens"] / stats["slots"])
    assert (with_stats | StrOutputParser()).invoke(inputs) == reader.invoke(inputs)
    assert "".join((with_stats | StrOutputParser()).stream(inputs)) == reader.invoke(inputs)
    record = reader.compressor.compress_documents(docs, question)[0].metadata["comprexit"]
    assert record["ratio"] == reader.compressor.ratio_for()  # the configured ratio, an integer


def test_embeddings_share_the_default_model_and_warn_on_truncation(caplog):
    embeddings = ComprExITEmbeddings()
    assert embeddings.model is defaults.default_embedder() is ComprExITEmbeddings().model
    store = InMemoryVectorStore.from_documents(
        [Document(page_content="Paris is the capital of France."), Document(page_content="Cats purr.")], embeddings
    )
    assert store.similarity_search("capital of France", k=1)[0].page_content.startswith("Paris")
    assert len(embeddings.embed_query("cats")) == 384
    with caplog.at_level(logging.WARNING):
        embeddings.embed_documents(["word " * 600, "short"])
    assert "1 text(s) are longer than the embedder's 256-token window" in caplog.text


@pytest.mark.slow
def test_zero_argument_components_share_one_default_backbone():
    compressor = ComprExITDocumentCompressor()
    reader = ComprExITReader()
    backbone = defaults.default_backbone()
    assert compressor.compressor is defaults.default_compressor() and compressor.compressor.backbone is backbone
    assert reader.compressor.compressor.backbone is backbone and reader.reader is defaults.default_reader()
    assert compressor.ratio_for() == compressor.compressor.config.ratio  # the shipped head's default ratio
    docs = [Document(page_content="The Eiffel Tower was built from 1887 to 1889 by Gustave Eiffel's company.")]
    answer = reader.bind(max_new_tokens=6).invoke({"question": "Who built the Eiffel Tower?", "context": docs})
    assert isinstance(answer, str) and answer and answer != EMPTY_RESPONSE
