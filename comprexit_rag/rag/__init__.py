"""Retrieval-augmented generation over stored slots: the pipeline, its directory and what it returns."""

from .directory import PipelineRecord
from .pipeline import METHODS, RAGPipeline
from .results import Answer, AnswerStats, IndexReport, Source

__all__ = ["METHODS", "Answer", "AnswerStats", "IndexReport", "PipelineRecord", "RAGPipeline", "Source"]
