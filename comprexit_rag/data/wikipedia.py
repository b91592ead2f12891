"""Streaming reader for WikiExtractor dumps (``<doc id url title>`` ... ``</doc>``)."""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Iterable, Iterator

from comprexit_rag.data._io import PathLike, open_text
from comprexit_rag.data.records import Passage

logger = logging.getLogger(__name__)

_DOC_OPEN = re.compile(r'^<doc id="(?P<id>[^"]*)"[^>]*?title="(?P<title>[^"]*)"[^>]*>\s*$')
_DOC_CLOSE = "</doc>"


def _documents(path: PathLike) -> Iterator[Passage]:
    """Yield the non-empty documents of one file."""
    with open_text(path) as handle:
        header: re.Match[str] | None = None
        body: list[str] = []
        for line in handle:
            if header is None:
                header = _DOC_OPEN.match(line)
                body = []
                continue
            if line.rstrip("\n") == _DOC_CLOSE:
                title = html.unescape(header["title"])
                if body and html.unescape(body[0].strip()) == title:
                    body = body[1:]
                text = "".join(body).strip()
                if text:
                    yield Passage(text=text, title=title, id=f"enwiki/{header['id']}")
                header = None
                continue
            body.append(line)
        if header is not None:
            logger.warning("%s ends inside document %s; it was skipped", path, header["id"])


def iter_wikipedia_documents(paths: PathLike | Iterable[PathLike]) -> Iterator[Passage]:
    """Yield documents from one or more WikiExtractor files, in order.

    The title comes from the ``<doc>`` tag; the repeated title line is dropped; empty documents
    are skipped.
    """
    files = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    for path in files:
        yield from _documents(path)
