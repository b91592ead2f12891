"""The methods: ComprExIT, its baselines and the reference contexts, each registered once.

This package's ``__init__`` stays free of torch: it only declares the specs (classes are named by
import path and loaded on first use). Order matters: it is the order of the CLI's choices.
"""

from .registry import MethodSpec, describe_methods, get_method, method_names, register_method, registered_methods

__all__ = ["MethodSpec", "describe_methods", "get_method", "method_names", "register_method", "registered_methods"]

_EVALUATION = "comprexit_rag.evaluation.methods"
_ENCODERS = "comprexit_rag.training.encoders"

# What the two stored-slot heads share: trained in both stages, with a reader adapter if asked, and
# scored by compressing every passage alone.
SLOT_HEAD = {
    "context": "slots",
    "takes_ratio": True,
    "evaluator": f"{_EVALUATION}:StoredSlots",
    "stages": ("pretrain", "sft"),
    "reader_adapter": True,
    "distill": True,
}

register_method(
    MethodSpec(
        name="comprexit",
        summary="ComprExIT slots, computed once per passage and stored",
        module="comprexit_rag.methods.comprexit.head:ComprExITHead",
        compressor="comprexit_rag.methods.comprexit.compressor:ComprExITCompressor",
        encoder=f"{_ENCODERS}:ComprExITEncoder",
        pipeline=True,
        **SLOT_HEAD,
    )
)
register_method(
    MethodSpec(
        name="mean-pool",
        summary="mean-pooled layer states through the same projector (a stored-slot baseline)",
        module="comprexit_rag.methods.mean_pool:MeanPoolHead",
        compressor="comprexit_rag.methods.mean_pool:MeanPoolCompressor",
        encoder=f"{_ENCODERS}:SlotHeadEncoder",
        **SLOT_HEAD,
    )
)
register_method(
    MethodSpec(
        name="comi",
        summary="query-aware COMI slots, computed now for the question",
        context="slots",
        query_aware=True,
        takes_ratio=True,
        module="comprexit_rag.methods.comi:COMIMerger",
        compressor="comprexit_rag.methods.comi:COMICompressor",
        encoder=f"{_ENCODERS}:COMIContextEncoder",
        evaluator=f"{_EVALUATION}:QueryAware",
        stages=("sft",),
        reader_adapter=True,
        pipeline=True,
    )
)
register_method(
    MethodSpec(
        name="full-tuned",
        summary="a learned soft prompt before the raw passages",
        context="text",
        module="comprexit_rag.methods.soft_prompt:SoftPrompt",
        encoder=f"{_ENCODERS}:SoftPromptEncoder",
        evaluator=f"{_EVALUATION}:FullTuned",
        stages=("sft",),
    )
)
register_method(
    MethodSpec(
        name="full-lora",
        summary="the raw passages, read through a reader adapter trained for them (the heads' adapter budget)",
        context="text",
        module="comprexit_rag.methods.full_lora:FullLoRA",
        encoder=f"{_ENCODERS}:FullTextEncoder",
        evaluator=f"{_EVALUATION}:FullLoRA",
        stages=("sft",),
        reader_adapter=True,
        adapter_only=True,
    )
)
register_method(
    MethodSpec(
        name="full",
        summary="raw passages",
        context="text",
        evaluator=f"{_EVALUATION}:FullText",
        pipeline=True,
    )
)
register_method(
    MethodSpec(
        name="truncate",
        summary="the first 1/ratio of the passages' tokens",
        context="text",
        takes_ratio=True,
        evaluator=f"{_EVALUATION}:Truncate",
    )
)
register_method(
    MethodSpec(
        name="closed-book",
        summary="no passages (a control: what the reader answers without them)",
        context="none",
        evaluator=f"{_EVALUATION}:ClosedBook",
        pipeline=True,
    )
)
