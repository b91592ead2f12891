"""Scale-out helpers: corpus-scale compression on Ray Data and slot serving through vLLM.

Neither Ray nor vLLM is imported here: :mod:`.ray_indexing` imports Ray when called
(``pip install "ray[data]"``), and :mod:`.vllm_inputs` only builds tensors and HTTP payloads.
See ``docs/SCALING.md``.
"""

from .ray_indexing import RayIndexReport, SlotCompressionActor, compress_corpus_with_ray, slot_store_fingerprint
from .vllm_inputs import (
    VLLMSlotClient,
    decode_prompt_embeds,
    encode_prompt_embeds,
    prompt_embeds,
    to_embeds_prompt,
)

__all__ = [
    "RayIndexReport",
    "SlotCompressionActor",
    "VLLMSlotClient",
    "compress_corpus_with_ray",
    "decode_prompt_embeds",
    "encode_prompt_embeds",
    "prompt_embeds",
    "slot_store_fingerprint",
    "to_embeds_prompt",
]
