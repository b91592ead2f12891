"""PolicyQA loader: extractive questions over website privacy policies (SQuAD v1 layout)."""

from __future__ import annotations

from comprexit_rag.data._io import PathLike, read_json
from comprexit_rag.data.records import Passage, QAExample


def load_policyqa(path: PathLike) -> list[QAExample]:
    """Load one example per question (``data[].paragraphs[].qas[]``); the passage is its policy segment.

    Passages are titled with the website the policy belongs to; answers are deduplicated span texts.
    """
    examples = []
    for document in read_json(path)["data"]:
        for index, paragraph in enumerate(document["paragraphs"]):
            passage = Passage(text=paragraph["context"], title=document["title"], id=f"{document['title']}/{index}")
            for qa in paragraph["qas"]:
                examples.append(
                    QAExample(
                        id=str(qa["id"]),
                        question=qa["question"],
                        answers=tuple(dict.fromkeys(answer["text"] for answer in qa["answers"])),
                        passages=(passage,),
                        supporting=(0,),
                    )
                )
    return examples
