"""Natural Questions loaders: NQ-open with its oracle passage, and QED single-paragraph QA."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from comprexit_rag.data._io import PathLike, iter_jsonl
from comprexit_rag.data.records import Passage, QAExample
from comprexit_rag.data.text import detokenize, normalize_question


def nq_open_id(question: str) -> str:
    """Stable id of an NQ-open question (the file has none): sha1 of the normalised question."""
    digest = hashlib.sha1(normalize_question(question).encode("utf-8")).hexdigest()
    return f"nq-open-{digest[:16]}"


def load_nq_open(path: PathLike) -> list[QAExample]:
    """Load NQ-open oracle rows: passages are ``ctxs``; supporting marks the gold ctx (``(0,)``)."""
    examples = []
    for row in iter_jsonl(path):
        qid = nq_open_id(row["question"])
        ctxs = row["ctxs"]
        passages = tuple(Passage(text=c["text"], title=c.get("title", ""), id=f"{qid}/{i}") for i, c in enumerate(ctxs))
        gold = tuple(i for i, c in enumerate(ctxs) if c.get("isgold"))
        examples.append(
            QAExample(
                id=qid,
                question=row["question"],
                answers=tuple(dict.fromkeys(row["answers"])),
                passages=passages,
                supporting=gold or ((0,) if passages else ()),
            )
        )
    return examples


def _expand(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """One file, a directory of ``*.jsonl*`` files, or an iterable of files -> sorted file list."""
    if isinstance(paths, str | os.PathLike):
        path = Path(paths)
        return sorted(path.glob("*.jsonl*")) if path.is_dir() else [path]
    return [Path(p) for p in paths]


def load_nq_qed(paths: PathLike | Iterable[PathLike]) -> list[QAExample]:
    """Load NQ QED rows from one or more files (or a directory), undoing the token spacing.

    The single passage is the answer's paragraph, so ``supporting`` is ``(0,)``.
    """
    examples = []
    for path in _expand(paths):
        for row in iter_jsonl(path):
            qid = str(row["example_id"])
            passage = Passage(text=detokenize(row["paragraph_text"]), title=row["title_text"], id=qid)
            examples.append(
                QAExample(
                    id=qid,
                    question=row["question_text"],
                    answers=tuple(dict.fromkeys(detokenize(a) for a in row["answer_text"])),
                    passages=(passage,),
                    supporting=(0,),
                )
            )
    return examples
