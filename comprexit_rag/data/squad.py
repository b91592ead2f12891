"""SQuAD v1.1 loader for the MRQA JSON-lines layout (a header line, then one context per line)."""

from __future__ import annotations

from comprexit_rag.data._io import PathLike, iter_jsonl
from comprexit_rag.data.records import Passage, QAExample


def load_squad_mrqa(path: PathLike) -> list[QAExample]:
    """Load one example per question; the passage is its context, answers are deduplicated.

    Falls back to ``detected_answers`` texts when a question lists no ``answers``.
    """
    examples = []
    for row in iter_jsonl(path):
        if "header" in row:
            continue
        passage = Passage(text=row["context"], id=str(row["id"]))
        for qa in row["qas"]:
            answers = qa["answers"] or [d["text"] for d in qa.get("detected_answers", ())]
            examples.append(
                QAExample(
                    id=str(qa["id"]),
                    question=qa["question"],
                    answers=tuple(dict.fromkeys(answers)),
                    passages=(passage,),
                    supporting=(0,),
                )
            )
    return examples
