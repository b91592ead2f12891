"""At high ratios, do the slots lose which words a passage has, or how its words go together?

A ComprExIT slot is a transport-weighted mean of its tokens' anchors (METHOD.md 1b), a bag: at 16x one slot
holds about 16 tokens and nothing in the mean says in which order they came. If that is what 16x loses, the
passages regenerated from 16x slots should keep a passage's words about as often as at 4x or 8x yet put them
together wrongly (session 31's example: "Henrique Daiyong and Xiu Daiyannarin" for Dai Yongge and Dai Xiuli).
This reads the passages that ``regenerate_then_read.py`` wrote out from the slots (no model, seconds) and
compares, per ratio:

* **word recall**: the share of the passage's words (multiset) that the regeneration has;
* **pair recall**: the same for adjacent word pairs;
* **pairs kept where both words are**: of the passage's pairs whose two words both appear in the
  regeneration, the share that appear as that pair; the arrangement, with the words' loss taken out;
* **the same, its words shuffled**: the regeneration's words in a random order (chance);
* the same two for **name pairs** (both words capitalised in the passage), where a wrong binding changes the fact.

If "pairs kept where both words are" falls with the ratio, the slots lose the arrangement of the words they keep,
and a slot that records where its tokens came from is a change to try; if it holds, what a high ratio loses is
the words themselves. One head read at every ratio (the multi-ratio head) keeps other differences out::

    python research/regeneration_order.py research/results/regenerate_then_read_4x_400.json \\
        research/results/regenerate_then_read_4x_400_multi_ratio.json \\
        research/results/regenerate_then_read_8x_400.json research/results/regenerate_then_read_16x_400.json \\
        research/results/regenerate_then_read_16x_400_stage2.json --out research/results/regeneration_order.json

Session 34: the multi-ratio head keeps 86% / 69% / 51% of the words at 4 / 8 / 16x, and of the adjacent pairs
whose two words survive 92% / 72% / 57% (chance 7-11%): a higher ratio loses words and the order of the rest.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

from regenerate_then_read import load_nq

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def overlap(reference: Counter, candidate: Counter) -> int:
    """How many of ``reference``'s items (with multiplicity) ``candidate`` has."""
    return sum(min(count, candidate[item]) for item, count in reference.items())


def order_measures(passage: str, regenerated: str) -> dict[str, tuple[int, int]]:
    """(kept, of) counts for one passage; lower-cased, so that case does not count as a lost word."""
    original = words(passage)
    lower, written = [w.lower() for w in original], [w.lower() for w in words(regenerated)]
    written_words, written_pairs = Counter(written), Counter(pairwise(written))
    pairs = list(pairwise(lower))
    names = [
        pair for pair, (a, b) in zip(pairs, pairwise(original), strict=True) if a[:1].isupper() and b[:1].isupper()
    ]

    # Chance: the same words written in a random order keep a pair only where they fall side by side.
    shuffled = written.copy()
    random.Random(0).shuffle(shuffled)
    shuffled_pairs = Counter(pairwise(shuffled))

    def kept_where_both(candidates: list[tuple[str, str]], side_by_side: Counter) -> tuple[int, int]:
        both = [pair for pair in candidates if written_words[pair[0]] and written_words[pair[1]]]
        return sum(1 for pair in both if side_by_side[pair]), len(both)

    return {
        "word recall": (overlap(Counter(lower), written_words), len(lower)),
        "pair recall": (overlap(Counter(pairs), written_pairs), len(pairs)),
        "pairs kept where both words are": kept_where_both(pairs, written_pairs),
        "the same, its words shuffled (chance)": kept_where_both(pairs, shuffled_pairs),
        "name pair recall": (overlap(Counter(names), written_pairs), len(names)),
        "name pairs kept where both words are": kept_where_both(names, written_pairs),
    }


def measure(report: dict, passages: dict[str, str]) -> dict:
    totals: dict[str, list[int]] = {}
    for record in report["questions_detail"]:
        for name, (kept, of) in order_measures(passages[record["id"]], record["regenerated_passage"]).items():
            total = totals.setdefault(name, [0, 0])
            total[0] += kept
            total[1] += of
    return {name: {"percent": round(100 * kept / of, 1), "kept": kept, "of": of} for name, (kept, of) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="regenerate_then_read.py outputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    limit = max(len(report["questions_detail"]) for report in reports)
    passages = {example.id: example.passages[0].formatted() for example in load_nq(limit)}
    rows = [
        {"file": str(path), "head": report["head"], "ratio": report["ratio"], **measure(report, passages)}
        for path, report in zip(args.reports, reports, strict=True)
    ]
    made_by = " ".join(["python", *sys.argv])
    args.out.write_text(json.dumps({"made_by": made_by, "rows": rows}, indent=1) + "\n")
    for row in rows:
        print(row["ratio"], row["head"], {k: v["percent"] for k, v in row.items() if isinstance(v, dict)})


if __name__ == "__main__":
    main()
