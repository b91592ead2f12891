"""Serve stored slots through vLLM: prompt embeddings for ``LLM.generate`` and ``/v1/completions``.

vLLM accepts a prompt as input embeddings ``[T, H]`` instead of token ids, offline with
``LLM(model, enable_prompt_embeds=True)`` and ``llm.generate({"prompt_embeds": tensor})``, and
online with ``vllm serve MODEL --enable-prompt-embeds`` and a base64 ``torch.save`` payload in
the ``prompt_embeds`` field of ``/v1/completions``. The embeddings built here are exactly the
ones :class:`~comprexit_rag.reading.reader.Reader` feeds the backbone: ``embed(prompt before) + slots +
embed(prompt after)`` with :class:`~comprexit_rag.prompts.QAPrompt`, so vLLM serving the same
backbone answers as the reader does (greedy, up to kernel numerics).

vLLM itself is not a dependency: nothing here imports it.

>>> embeds = prompt_embeds(backbone, "Who wrote Hamlet?", soft_context, dtype=torch.bfloat16)
>>> llm.generate(to_embeds_prompt(backbone, "Who wrote Hamlet?", soft_context), params)  # offline
>>> VLLMSlotClient("http://localhost:8000", "HuggingFaceTB/SmolLM2-135M-Instruct").complete(embeds)
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..backbone import Backbone
from ..errors import InvalidInputError
from ..prompts import QAPrompt
from ..reading.reader import Reader
from ..soft_context import SoftContext

__all__ = [
    "PROMPT_EMBEDS_DTYPES",
    "VLLMSlotClient",
    "decode_prompt_embeds",
    "encode_prompt_embeds",
    "prompt_embeds",
    "to_embeds_prompt",
]

# The dtypes vLLM's server accepts in a ``prompt_embeds`` payload.
PROMPT_EMBEDS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

Slots = SoftContext | torch.Tensor
# (url, JSON body bytes, headers, timeout) -> response body bytes
Transport = Callable[[str, bytes, dict[str, str], float], bytes]


@torch.no_grad()
def prompt_embeds(
    backbone: Backbone,
    question: str,
    slots: Slots,
    *,
    prompt: QAPrompt | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The full prompt as input embeddings ``[T, H]``: prompt-before + slots + prompt-after.

    Args:
        backbone: the reader backbone (its input embeddings and tokenizer; vLLM must serve the
            same weights).
        question: the question.
        slots: a :class:`SoftContext` (all its passages, in order) or an ``[S, H]`` tensor.
        prompt: the prompt layout (default ``QAPrompt()``, as the Reader).
        dtype: dtype of the result (default the backbone's); use the served model's dtype,
            e.g. ``torch.bfloat16``, since vLLM copies the embeddings into its own buffers.

    Returns:
        A contiguous CPU tensor ``[T, H]`` with ``T = len(before) + S + len(after)``.
    """
    reader = Reader(backbone, prompt)
    with backbone.lock:
        batch = reader.build_inputs([question], [slots])
    embeds = batch.inputs_embeds[0]
    return embeds.to(device="cpu", dtype=dtype or embeds.dtype).contiguous()


def to_embeds_prompt(backbone: Backbone, question: str, slots: Slots, **options: Any) -> dict[str, torch.Tensor]:
    """A vLLM ``EmbedsPrompt`` (``{"prompt_embeds": [T, H] tensor}``) for ``LLM.generate``.

    ``options``: those of :func:`prompt_embeds` (``prompt``, ``dtype``). The engine must be built
    with ``LLM(model, enable_prompt_embeds=True)``.
    """
    return {"prompt_embeds": prompt_embeds(backbone, question, slots, **options)}


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """Base64 of ``torch.save(embeds)``: the ``prompt_embeds`` payload of vLLM's ``/v1/completions``.

    The tensor keeps its dtype (cast it to the served model's first). It is cloned to a
    contiguous CPU tensor so that a view never ships its whole underlying storage.
    """
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2:
        raise InvalidInputError(f"prompt embeddings must be a 2-D [T, H] tensor, got {_describe(embeds)}")
    if embeds.dtype not in PROMPT_EMBEDS_DTYPES:
        raise InvalidInputError(f"vLLM accepts prompt embeddings in float32, bfloat16 or float16, not {embeds.dtype}")
    if embeds.shape[0] == 0:
        raise InvalidInputError("prompt embeddings are empty (0 positions)")
    buffer = io.BytesIO()
    torch.save(embeds.detach().to("cpu").contiguous().clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_prompt_embeds(payload: str | bytes) -> torch.Tensor:
    """Decode a ``prompt_embeds`` payload exactly as vLLM's OpenAI server does.

    Strict base64, ``torch.load(..., weights_only=True, map_location="cpu")`` with sparse
    invariants checked, a float32/bfloat16/float16 dtype check, ``to_dense`` and a squeeze of
    a leading batch dimension. Raises :class:`InvalidInputError` where the server would reject.
    """
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInputError(f"prompt_embeds is not valid base64: {error}") from error
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location=torch.device("cpu"))
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError...: whatever the bytes provoke
        raise InvalidInputError(
            f"prompt_embeds is not a tensor saved with torch.save ({type(error).__name__}: {str(error)[:200]}); "
            "encode it with encode_prompt_embeds"
        ) from error
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in PROMPT_EMBEDS_DTYPES:
        raise InvalidInputError(f"prompt_embeds must hold a float32/bfloat16/float16 tensor, got {_describe(tensor)}")
    tensor = tensor.to_dense()
    if tensor.dim() > 2:
        tensor = tensor.squeeze(0)
    if tensor.dim() != 2:
        raise InvalidInputError(f"prompt_embeds must be [T, H] (or [1, T, H]), got {tuple(tensor.shape)}")
    return tensor


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _urllib_transport(url: str, body: bytes, headers: dict[str, str], timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


class VLLMSlotClient:
    """A minimal client of a vLLM OpenAI-compatible server started with ``--enable-prompt-embeds``.

    >>> client = VLLMSlotClient("http://localhost:8000", "HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> client.answer(backbone, "Who wrote Hamlet?", soft_context, dtype=torch.bfloat16)

    Args:
        base_url: server root (``http://host:port``; a trailing ``/v1`` is accepted).
        model: the served model name, as given to ``vllm serve``.
        api_key: sent as a bearer token when set (``vllm serve --api-key``).
        timeout: seconds per request.
        transport: ``(url, body, headers, timeout) -> response bytes``; default ``urllib``.
            Tests pass a fake one.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: Transport | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.transport = transport or _urllib_transport

    def request_body(
        self, embeds: torch.Tensor | Sequence[torch.Tensor], *, max_tokens: int = 32, **options: Any
    ) -> dict[str, Any]:
        """The JSON body of one ``/v1/completions`` request (greedy: ``temperature`` 0).

        ``embeds`` is one ``[T, H]`` tensor or a list of them (one choice each); ``options`` are
        further completion fields (``stop``, ``seed``...). No ``prompt`` field is sent.
        """
        payload = (
            encode_prompt_embeds(embeds)
            if isinstance(embeds, torch.Tensor)
            else [encode_prompt_embeds(item) for item in embeds]
        )
        return {"model": self.model, "prompt_embeds": payload, "max_tokens": max_tokens, "temperature": 0.0, **options}

    def complete_many(self, embeds: Sequence[torch.Tensor], *, max_tokens: int = 32, **options: Any) -> list[str]:
        """Generate from several prompts in one request; texts in the order of ``embeds``."""
        response = self._post(self.request_body(list(embeds), max_tokens=max_tokens, **options))
        choices = sorted(response["choices"], key=lambda choice: choice["index"])
        return [choice["text"] for choice in choices]

    def complete(self, embeds: torch.Tensor, *, max_tokens: int = 32, **options: Any) -> str:
        """Generate from one ``[T, H]`` prompt; returns the completion text."""
        response = self._post(self.request_body(embeds, max_tokens=max_tokens, **options))
        return response["choices"][0]["text"]

    def answer(
        self,
        backbone: Backbone,
        question: str,
        slots: Slots,
        *,
        prompt: QAPrompt | None = None,
        dtype: torch.dtype | None = None,
        max_tokens: int = 32,
    ) -> str:
        """Answer ``question`` from ``slots``: :func:`prompt_embeds` then :meth:`complete`.

        The request names the reader's stop tokens (``stop_token_ids``, a vLLM sampling parameter):
        the server's own EOS may not be the token the head ends its answers with.
        """
        embeds = prompt_embeds(backbone, question, slots, prompt=prompt, dtype=dtype)
        stops = sorted(Reader(backbone, prompt).stop_token_ids)
        return self.complete(embeds, max_tokens=max_tokens, stop_token_ids=stops).strip()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        raw = self.transport(self.url, json.dumps(body).encode("utf-8"), headers, self.timeout)
        return json.loads(raw)

    def __repr__(self) -> str:
        return f"VLLMSlotClient({self.url!r}, model={self.model!r})"
