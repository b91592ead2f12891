"""Input checks of the LangChain classes: LangChain objects in, comprexit-rag's typed errors out.

Text checks are the core's (:func:`comprexit_rag.validation.check_text`); what is checked here is
only what LangChain adds: documents that are not :class:`Document` objects, and pydantic, which
wraps the core's errors raised while a model is built in a ``ValidationError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from comprexit_rag.errors import ComprExITError, InvalidInputError
from comprexit_rag.validation import check_text
from langchain_core.documents import Document
from pydantic import ValidationError

__all__ = ["TypedErrors", "check_documents", "is_blank", "typed_errors"]


@contextmanager
def typed_errors(owner: type | None = None) -> Iterator[None]:
    """Raise a comprexit-rag error that pydantic wrapped in a ``ValidationError`` as itself.

    An unknown argument (``extra="forbid"``) of ``owner`` becomes an :class:`InvalidInputError`
    naming the accepted ones; any other ``ValidationError`` of pydantic's own (a field of the
    wrong type) is raised unchanged.
    """
    try:
        yield
    except ValidationError as error:
        unknown = []
        for detail in error.errors():
            cause = (detail.get("ctx") or {}).get("error")
            if isinstance(cause, ComprExITError):
                raise cause from error
            if detail.get("type") == "extra_forbidden":
                unknown.append(".".join(str(part) for part in detail["loc"]))
        if unknown and owner is not None:
            fields = ", ".join(sorted(owner.model_fields))  # type: ignore[attr-defined]
            raise InvalidInputError(
                f"{owner.__name__} got unknown argument(s) {', '.join(unknown)}; it accepts: {fields}."
            ) from error
        raise


class TypedErrors:
    """Mixed into the pydantic classes: a bad argument raises the core's typed errors, not a ValidationError."""

    def __init__(self, **kwargs: Any) -> None:
        with typed_errors(type(self)):
            super().__init__(**kwargs)


def check_documents(documents: object, what: str = "documents") -> list[Document]:
    """``documents`` as a list, each a :class:`Document` whose ``page_content`` is a string of valid Unicode.

    Blank documents (empty or whitespace-only content) are allowed: callers pass them through.

    Raises:
        InvalidInputError: not a list of documents, an item that is not a ``Document``, or a
            ``page_content`` that is not a string or not valid Unicode.
    """
    if documents is None or isinstance(documents, str | bytes | Document | Mapping) or not _iterable(documents):
        raise InvalidInputError(f"{what} must be a list of Documents, got {type(documents).__name__}.")
    checked = list(documents)  # type: ignore[call-overload]
    for index, document in enumerate(checked):
        if not isinstance(document, Document):
            raise InvalidInputError(
                f"Item {index} of {what} is a {type(document).__name__}, not a Document: pass a list of Documents "
                "(wrap a text as Document(page_content=text))."
            )
        if not is_blank(document):
            check_text(document.page_content, f"The page_content of document {index}")
    return checked


def is_blank(document: Document) -> bool:
    """Whether ``document`` has string content that is empty or whitespace only (nothing to compress)."""
    return isinstance(document.page_content, str) and not document.page_content.strip()


def _iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True
