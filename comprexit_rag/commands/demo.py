"""``comprexit-rag demo``: index a few HotpotQA questions' paragraphs (or a built-in corpus) and ask.

With the shared data available (``shared/data`` found by :func:`comprexit_rag.data.data_root`,
or ``COMPREXIT_DATA``, or ``--data``), the first ``--questions`` questions of the project's
HotpotQA dev split are used and all their paragraphs (supporting ones and distractors) are
indexed together. Without data, a small built-in corpus is written to the demo directory and
indexed instead. The pipeline is cached, so a second run only answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import Passage, QAExample
from ..methods import method_names
from ._args import positive_int

if TYPE_CHECKING:
    from ..rag.results import Answer
from .ask import describe_stats

DESCRIPTION = """\
Index the paragraphs of a few HotpotQA dev questions and answer them, showing the retrieved
titles, the slots read and the timings.

The HotpotQA file is found in shared/data (in or above the working directory), in
$COMPREXIT_DATA, or given with --data; without it, a small built-in corpus is used. The first
run converts the embedded SmolLM2 once (about a minute) and indexes; later runs only answer.
"""

#: The built-in corpus: written to ``builtin_corpus.jsonl`` in the demo directory when no data is found.
BUILTIN_PASSAGES: tuple[dict[str, str], ...] = (
    {
        "title": "Marie Curie",
        "text": "Marie Curie was a Polish-born physicist and chemist who did pioneering research on radioactivity. "
        "She was the first woman to win a Nobel Prize and won Nobel Prizes in both physics (1903) and "
        "chemistry (1911).",
    },
    {
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It was "
        "designed by the company of the engineer Gustave Eiffel and built from 1887 to 1889 for the World's Fair.",
    },
    {
        "title": "Amazon River",
        "text": "The Amazon River in South America is the largest river in the world by discharge. It flows "
        "through Peru, Colombia and Brazil before emptying into the Atlantic Ocean.",
    },
    {
        "title": "Mount Kilimanjaro",
        "text": "Mount Kilimanjaro is a dormant volcano in Tanzania. Its highest summit, Uhuru Peak, is 5,895 "
        "metres above sea level, which makes it the highest mountain in Africa.",
    },
    {
        "title": "Python (programming language)",
        "text": "Python is a high-level programming language created by Guido van Rossum and first released in "
        "1991. Its design emphasises readable code with significant indentation.",
    },
    {
        "title": "Ludwig van Beethoven",
        "text": "Ludwig van Beethoven was a German composer and pianist, born in Bonn in 1770. He wrote nine "
        "symphonies; the Ninth ends with a choral setting of Schiller's Ode to Joy.",
    },
    {
        "title": "Penicillin",
        "text": "Penicillin was discovered in 1928 by the Scottish physician Alexander Fleming, who noticed that "
        "a mould, Penicillium, killed the bacteria growing around it.",
    },
    {
        "title": "Lake Baikal",
        "text": "Lake Baikal in Siberia, Russia, is the deepest lake in the world at 1,642 metres and holds about "
        "a fifth of the world's unfrozen fresh surface water.",
    },
    {
        "title": "Apollo 11",
        "text": "Apollo 11 was the first spaceflight to land humans on the Moon. Neil Armstrong and Buzz Aldrin "
        "landed on 20 July 1969 while Michael Collins stayed in lunar orbit.",
    },
)
#: (question, answer, title of the passage that answers it)
BUILTIN_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("Who discovered penicillin?", "Alexander Fleming", "Penicillin"),
    ("In which country is Mount Kilimanjaro?", "Tanzania", "Mount Kilimanjaro"),
    ("Who created the Python programming language?", "Guido van Rossum", "Python (programming language)"),
    ("In which city was Beethoven born?", "Bonn", "Ludwig van Beethoven"),
    ("What is the deepest lake in the world?", "Lake Baikal", "Lake Baikal"),
)
BUILTIN_CORPUS_FILE = "builtin_corpus.jsonl"


NAME = "demo"
HELP = "index a few HotpotQA dev questions' paragraphs (or a built-in corpus) and answer them"


def run(args: argparse.Namespace) -> int:
    from ..corpus import read_corpus
    from ..errors import InvalidInputError
    from ..evaluation.metrics import exact_match, f1_score
    from ..rag.directory import UNTRAINED_HEAD_DIR
    from ..rag.loading import DEFAULT
    from ..rag.pipeline import RAGPipeline

    if args.questions < 1:
        raise InvalidInputError(f"--questions must be positive, got {args.questions}.")
    methods = (
        list(method_names(pipeline=True))
        if "all" in (args.method or [])
        else list(dict.fromkeys(args.method or ["comprexit"]))
    )
    examples, origin = load_demo_examples(args.data, args.questions, builtin=args.builtin)
    directory = Path(args.out) if args.out else default_demo_dir(examples, args.backbone, args.head)
    directory.mkdir(parents=True, exist_ok=True)
    if origin == "built-in corpus":
        passages: Sequence[Passage] = read_corpus(write_builtin_corpus(directory / BUILTIN_CORPUS_FILE))
    else:
        passages = [passage for example in examples for passage in example.passages]
    print(f"Demo: {len(examples)} questions from the {origin}; pipeline in {directory}")

    pipeline = RAGPipeline.open(directory, backbone=args.backbone, head=args.head, device=args.device)
    report = pipeline.index(passages)
    print(
        f"Indexed {len(pipeline)} passages ({report.added} new, {report.compressed} compressed in "
        f"{report.seconds:.1f} s) with {pipeline.backbone.name}, ratio {pipeline.ratio}\n"
    )

    scores: dict[str, list[tuple[float, float]]] = {method: [] for method in methods}
    for number, example in enumerate(examples, start=1):
        gold_titles = {passage.title for passage in example.gold_passages()}
        print(f"Q{number}: {example.question}")
        print(f"  gold answer: {' | '.join(example.answers)}")
        shown_sources = False
        for method in methods:
            answer = pipeline.ask(example.question, method=method, k=args.k, max_new_tokens=args.max_new_tokens)
            if answer.sources and not shown_sources:  # every method but closed-book retrieves the same
                print("  retrieved (* = supporting): " + describe_sources(answer, gold_titles))
                shown_sources = True
            em, f1 = exact_match(answer.answer, example.answers), f1_score(answer.answer, example.answers)
            scores[method].append((em, f1))
            print(f"  {method:>9}: {answer.answer!r}  (EM {em:.0f}, F1 {f1:.2f})")
            print(f"             {describe_stats(answer)}")
        print()
    for method, values in scores.items():
        mean_em = sum(em for em, _ in values) / len(values)
        mean_f1 = sum(f1 for _, f1 in values) / len(values)
        print(f"{method}: EM {mean_em:.2f}, F1 {mean_f1:.2f} over {len(values)} questions")
    if pipeline.record.head == DEFAULT and (directory / UNTRAINED_HEAD_DIR).is_dir():
        print("Note: no trained ComprExIT head is shipped yet, so slots come from an UNTRAINED head.", file=sys.stderr)
    return 0


def load_demo_examples(data: str | None, count: int, *, builtin: bool = False) -> tuple[list[QAExample], str]:
    """The demo questions and where they come from (HotpotQA dev, a HotpotQA file or built-in)."""
    from ..data import DataNotFoundError, data_root, load_hotpotqa, load_split

    if not builtin:
        if data is not None and Path(data).is_file():
            return load_hotpotqa(data)[:count], f"HotpotQA file {data}"
        try:
            root = data_root(data)
            return load_split("hotpotqa", "dev", root)[:count], f"HotpotQA dev split in {root}"
        except DataNotFoundError as error:
            if data is not None:
                raise
            print(f"No HotpotQA data found ({error}); using the built-in corpus.", file=sys.stderr)
    examples = [
        QAExample(
            id=f"builtin/{index}",
            question=question,
            answers=(answer,),
            passages=(Passage(text="", title=title),),
            supporting=(0,),
        )
        for index, (question, answer, title) in enumerate(BUILTIN_QUESTIONS[:count])
    ]
    return examples, "built-in corpus"


def write_builtin_corpus(path: Path) -> Path:
    """Write :data:`BUILTIN_PASSAGES` as JSON lines to ``path`` (idempotent) and return it."""
    payload = "".join(json.dumps(passage, ensure_ascii=False) + "\n" for passage in BUILTIN_PASSAGES)
    if not path.is_file() or path.read_text(encoding="utf-8") != payload:
        path.write_text(payload, encoding="utf-8")
    return path


def default_demo_dir(examples: Sequence[QAExample], backbone: str | None, head: str | None) -> Path:
    """A cache directory keyed by the questions, backbone and head, so reruns reuse the index."""
    from ..default_model import cache_dir

    key = json.dumps([[e.id for e in examples], backbone, head and str(Path(head).resolve())])
    return cache_dir() / "demo" / hashlib.sha256(key.encode()).hexdigest()[:12]


def describe_sources(answer: Answer, gold_titles: set[str]) -> str:
    return ", ".join(
        f"{'*' if source.title in gold_titles else ''}{source.title or source.id} ({source.score:.2f})"
        for source in answer.sources
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=positive_int, default=3, help="questions to index and answer")
    parser.add_argument("--data", help="data directory (default: shared/data or $COMPREXIT_DATA) or a HotpotQA file")
    parser.add_argument("--builtin", action="store_true", help="use the built-in corpus even when data is found")
    parser.add_argument("--out", help="pipeline directory (default: a cache directory, reused across runs)")
    parser.add_argument(
        "--method",
        action="append",
        choices=(*method_names(pipeline=True), "all"),
        help="how to read the passages (repeatable; default comprexit; all = every method)",
    )
    parser.add_argument("--k", type=positive_int, default=5, help="passages to retrieve per question")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="longest answer, in tokens")
    parser.add_argument("--backbone", help="HF causal-LM name or path (default: embedded SmolLM2)")
    parser.add_argument(
        "--head",
        help="ComprExIT head: a checkpoint directory or the name of a shipped one (default: the shipped head, "
        "trained at 4x; comprexit-smollm2-135m-multi-ratio reads 8x and 16x)",
    )
    parser.add_argument("--device", help="torch device of the backbone (default: cuda when available)")
