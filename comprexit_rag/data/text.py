"""Text clean-up shared by loaders and splits: question normalisation and PTB detokenisation."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["detokenize", "normalize_question"]


def normalize_question(question: str) -> str:
    """Normalise a question for de-duplication: NFKC, lower case, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", question).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


# Literal replacements, then ordered (pattern, replacement) rules, that undo Penn-Treebank-style
# token spacing as found in the NQ QED release ("May 18 , 2018 .", "McBurney 's point",
# "( IgG , IgM )", "`` le coup ''"). Patterns start with a literal where possible, for speed.
_LITERAL_RULES: tuple[tuple[str, str], ...] = (
    ("\u200b", ""),  # zero-width marks and stray BOMs
    ("\u200e", ""),
    ("\u200f", ""),
    ("\ufeff", ""),
    ("`` ", '"'),  # opening double quote
    ("``", '"'),
    (" ''", '"'),  # closing double quote
    ("''", '"'),
)
_DETOKENIZE_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r" --(?<=\d --) (?=\d)", "–"),  # numeric ranges: "1701 -- 1744" -> "1701–1744"
        (r" -- ", " – "),  # other dashes
        (r" -(?<=\w -) (?=\w)", "-"),  # split hyphens: "zombie - like" -> "zombie-like"
        (r" :(?<=\d :) (?=\d)", ":"),  # times and verses: "10 : 30" -> "10:30"
        (r"([(\[{]) ", r"\1"),  # space after an opening bracket
        (r" ([)\]}])", r"\1"),  # space before a closing bracket
        (r" ([,.;:!?%])(?=\s|$|[\"')\]])", r"\1"),  # space before punctuation
        (r" (n't|'s|'re|'ve|'ll|'m|'d)\b", r"\1"),  # clitics: "ca n't", "Destiny 's"
        (r" '(?<=s ')(?=[\s,.;:!?)]|$)", "'"),  # plural possessive: "Cyrus ' policy"
        (r"  +", " "),
    )
)


def detokenize(text: str) -> str:
    """Undo tokenisation spacing, e.g. ``"May 18 , 2018 ."`` -> ``"May 18, 2018."``."""
    for old, new in _LITERAL_RULES:
        text = text.replace(old, new)
    for pattern, replacement in _DETOKENIZE_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()
