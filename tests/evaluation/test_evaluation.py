"""Tests of the evaluation harness (``comprexit_rag.evaluation.harness``): contexts from another example."""

from __future__ import annotations

import pytest

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.evaluation.harness import evaluate, with_other_contexts
from comprexit_rag.evaluation.methods import FullText, PreparedContexts
from comprexit_rag.reading.reader import Reader


def examples() -> list[QAExample]:
    return [
        QAExample(f"q{i}", f"Who founded town {i}?", (f"Founder {i}",), (Passage(f"Founder {i} founded town {i}."),))
        for i in range(3)
    ]


class Recording(FullText):
    """The raw-text method, remembering which passages each question was given."""

    name = "recording"

    def __init__(self, backbone) -> None:
        super().__init__(backbone)
        self.seen: list[tuple[str, str]] = []

    def prepare(self, batch: list[QAExample]) -> PreparedContexts:
        self.seen += [(example.question, example.passages[0].text) for example in batch]
        return super().prepare(batch)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_other_contexts_give_each_question_the_next_examples_passages(tiny_backbone, batch_size):
    reader = Reader(tiny_backbone, max_new_tokens=2)
    own, other = Recording(tiny_backbone), Recording(tiny_backbone)
    evaluate(own, reader, examples(), batch_size=batch_size, show_progress=False)
    result = evaluate(other, reader, examples(), batch_size=batch_size, show_progress=False, contexts_from="other")
    assert own.seen == [(f"Who founded town {i}?", f"Founder {i} founded town {i}.") for i in range(3)]
    assert other.seen == [
        (f"Who founded town {i}?", f"Founder {(i + 1) % 3} founded town {(i + 1) % 3}.") for i in range(3)
    ]
    assert result.contexts_from == "other" and result.n == 3


def test_an_unknown_context_source_is_refused(tiny_backbone):
    with pytest.raises(InvalidInputError, match="contexts_from"):
        evaluate(FullText(tiny_backbone), Reader(tiny_backbone), examples(), contexts_from="sideways")


def test_other_contexts_skip_questions_about_the_same_passage():
    # SQuAD-like order: questions of one passage in a row; the next question's passage is often its own.
    passages = {name: (Passage(f"Text of {name}."),) for name in "ABC"}
    order = "AABCC"
    examples = [QAExample(f"q{i}", f"Question {i}?", ("x",), passages[name]) for i, name in enumerate(order)]
    others = with_other_contexts(examples)
    assert [other.passages for other in others] == [passages[name] for name in "BBCAA"]
    assert [other.question for other in others] == [example.question for example in examples]
    with pytest.raises(InvalidInputError, match="at least two different contexts"):
        with_other_contexts(examples[:2])
