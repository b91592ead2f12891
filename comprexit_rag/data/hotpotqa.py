"""HotpotQA loader for both the subsampled JSON-lines layout and the official JSON list layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comprexit_rag.data._io import PathLike, iter_jsonl, open_text, read_json
from comprexit_rag.data.records import Passage, QAExample


def _clean(text: str) -> str:
    """Collapse the double spaces left by joining sentences."""
    return " ".join(text.split())


def _from_subsampled(row: Mapping[str, Any]) -> QAExample:
    """``question_id``, ``question_text``, ``answers_objects[].spans``, ``contexts[]`` layout."""
    contexts = row["contexts"]
    passages = tuple(
        Passage(text=_clean(c["paragraph_text"]), title=c["title"], id=f"{row['question_id']}/{i}")
        for i, c in enumerate(contexts)
    )
    answers = tuple(dict.fromkeys(span for obj in row["answers_objects"] for span in obj["spans"]))
    return QAExample(
        id=str(row["question_id"]),
        question=row["question_text"],
        answers=answers,
        passages=passages,
        supporting=tuple(i for i, c in enumerate(contexts) if c["is_supporting"]),
    )


def _from_official(row: Mapping[str, Any]) -> QAExample:
    """Official ``question``, ``answer``, ``context=[[title, [sentences]]]``, ``supporting_facts``."""
    supporting_titles = {title for title, _sentence in row["supporting_facts"]}
    passages = tuple(
        Passage(text=_clean("".join(sentences)), title=title, id=f"{row['_id']}/{i}")
        for i, (title, sentences) in enumerate(row["context"])
    )
    return QAExample(
        id=str(row["_id"]),
        question=row["question"],
        answers=(row["answer"],),
        passages=passages,
        supporting=tuple(i for i, p in enumerate(passages) if p.title in supporting_titles),
    )


def load_hotpotqa(path: PathLike) -> list[QAExample]:
    """Load HotpotQA distractor questions, auto-detecting the JSON-lines or official JSON layout."""
    with open_text(path) as handle:
        head = handle.read(64).lstrip()
    if head.startswith("["):
        return [_from_official(row) for row in read_json(path)]
    return [_from_subsampled(row) for row in iter_jsonl(path)]
