"""COMI, the query-aware baseline: MIG regrouping and merging (``merge``), the trained merger (``merger``)
and the compressor that reads each passage with its question (``compressor``)."""

from .compressor import COMICompressor
from .merge import (
    allocate_group_sizes,
    group_index,
    group_mig,
    merge_weights,
    mig_merge,
    mig_merge_batch,
    near_equal_sizes,
    num_groups,
)
from .merger import (
    DEFAULT_MERGER,
    QUESTION_TEMPLATE,
    COMIConfig,
    COMIMerger,
    QueryBatch,
    encode_pairs,
    iter_query_batches,
    query_vectors,
    question_token_ids,
    read_with_query,
)

__all__ = [
    "DEFAULT_MERGER",
    "QUESTION_TEMPLATE",
    "COMICompressor",
    "COMIConfig",
    "COMIMerger",
    "QueryBatch",
    "allocate_group_sizes",
    "encode_pairs",
    "group_index",
    "group_mig",
    "iter_query_batches",
    "merge_weights",
    "mig_merge",
    "mig_merge_batch",
    "near_equal_sizes",
    "num_groups",
    "query_vectors",
    "question_token_ids",
    "read_with_query",
]
