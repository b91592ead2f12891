"""2WikiMultihopQA passage corpus loader (a JSON list of ``{title, text}``; no questions)."""

from __future__ import annotations

from comprexit_rag.data._io import PathLike, read_json
from comprexit_rag.data.records import Passage


def load_2wiki_corpus(path: PathLike) -> list[Passage]:
    """Load the corpus; ids are ``2wiki/<position>``."""
    rows = read_json(path)
    return [Passage(text=row["text"], title=row["title"], id=f"2wiki/{i}") for i, row in enumerate(rows)]
