"""MuSiQue loader (answerable multi-hop questions with 20 paragraphs each)."""

from __future__ import annotations

from comprexit_rag.data._io import PathLike, read_json
from comprexit_rag.data.records import Passage, QAExample


def load_musique(path: PathLike) -> list[QAExample]:
    """Load MuSiQue questions; answers are the answer followed by its aliases (deduplicated)."""
    examples = []
    for row in read_json(path):
        paragraphs = row["paragraphs"]
        passages = tuple(
            Passage(text=p["paragraph_text"], title=p["title"], id=f"{row['id']}/{p['idx']}") for p in paragraphs
        )
        examples.append(
            QAExample(
                id=str(row["id"]),
                question=row["question"],
                answers=tuple(dict.fromkeys([row["answer"], *row["answer_aliases"]])),
                passages=passages,
                supporting=tuple(i for i, p in enumerate(paragraphs) if p["is_supporting"]),
            )
        )
    return examples
