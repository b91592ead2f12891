"""Write the example notebooks of this directory from the cell sources below, executed.

The notebooks are generated, not edited by hand, so that they stay reproducible; they are committed
with their outputs, so that a reader sees the results without running them::

    HF_HUB_OFFLINE=1 python examples/_build_notebooks.py   # rewrite and execute every notebook (CPU, minutes)
    python examples/_build_notebooks.py --no-execute       # rewrite without running them (drafts)
    python examples/_build_notebooks.py --check            # exit 1 if a notebook's cells differ from here

``tests/test_notebooks.py`` executes them again.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = tuple[str, str]  # ("md" | "code", source)


def md(source: str) -> Cell:
    return ("md", textwrap.dedent(source).strip("\n"))


def code(source: str) -> Cell:
    return ("code", textwrap.dedent(source).strip("\n"))


# Shared by every notebook: offline, quiet logging, the data directory.
SETUP = """
import logging
import os
import warnings

# Everything below runs offline, on the embedded default models (SmolLM2-135M, all-MiniLM-L6-v2).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
"""

LOAD_QUESTIONS = """
from comprexit_rag.data import data_root, load_split

root = data_root()  # $COMPREXIT_DATA, else shared/data in or above the working directory
examples = load_split("hotpotqa", "dev", root)[:QUESTIONS]
passages = [passage for example in examples for passage in example.passages]
print(f"{len(examples)} questions, {len(passages)} paragraphs (supporting + distractors) from {root}")
"""

HEAD_NOTE = """
> **Note.** The shipped ComprExIT head (`comprexit_rag/pretrained/comprexit-smollm2-135m`) and its reader
> adapter read NQ gold passages at 4x with 49.2 F1 (59.6 from the raw text), but SmolLM2-135M is a very
> small reader: on multi-hop HotpotQA questions expect modest F1 from slots and text alike (the model card
> and BENCHMARKS.md give the numbers). Every step below runs the same way with a better head.
"""


# ---------------------------------------------------------------------------------------------
# 01: quickstart.
# ---------------------------------------------------------------------------------------------

QUICKSTART: list[Cell] = [
    md(
        """
        # ComprExIT RAG quickstart: stored slots vs. full context on HotpotQA

        `RAGPipeline` indexes passages once: it embeds them for dense retrieval **and** compresses each
        one into soft slots (≈ 1 slot per 4 tokens) that are stored on disk. Answering a question is then
        one retrieval, one slot lookup and one generation by the frozen reader (SmolLM2-135M), which reads
        the slots instead of the passages' tokens.

        This notebook indexes the paragraphs of a few HotpotQA dev questions into a temporary directory,
        asks those questions reading the stored slots (`comprexit`) and reading the raw text (`full`), and
        compares answers, F1 against the gold answers, latency and the number of context vectors the
        reader reads. Two controls show what the slots carry: the same question read from the slots
        retrieved for *another* question, and the reader answering closed-book (no passages).

        Data comes from `comprexit_rag.data.data_root()`: set `COMPREXIT_DATA=/path/to/shared/data` if it
        is not found automatically.
        """
    ),
    md(HEAD_NOTE),
    code(SETUP),
    code(
        """
import tempfile

import matplotlib.pyplot as plt

from comprexit_rag.evaluation.metrics import exact_match, f1_score
from comprexit_rag.rag import RAGPipeline

QUESTIONS = 3  # HotpotQA dev questions; all their paragraphs are indexed together
K = 3  # passages retrieved per question
MAX_NEW_TOKENS = 16
# What the reader reads: label -> (method, whose passages are retrieved).
RUNS = {
    "comprexit": ("comprexit", "own"),
    "full": ("full", "own"),
    "other Q": ("comprexit", "other"),  # the slots retrieved for the next question: a control
    "closed-book": ("closed-book", "own"),  # no passages at all: the other control
}
"""
    ),
    md("## The questions and their paragraphs"),
    code(LOAD_QUESTIONS),
    md(
        """
        ## Build the pipeline and index

        `RAGPipeline.build(directory)` loads the embedded backbone, the default head and the default
        embedder; `index()` embeds the passages and stores their slots. `RAGPipeline.open(directory)`
        would reload the same index later without recompressing anything.
        """
    ),
    code(
        """
        workdir = tempfile.TemporaryDirectory(prefix="comprexit-quickstart-")
        pipeline = RAGPipeline.build(workdir.name)
        report = pipeline.index(passages)
        print(pipeline)
        print(
            f"{report.added} passages indexed, {report.compressed} compressed into slots in {report.seconds:.1f} s "
            f"(ratio {pipeline.ratio})"
        )
        """
    ),
    md(
        """
        ## Ask: stored slots vs. full context, and the two controls

        Every run uses the same retriever, `k` and reader (with the head's reader adapter); they differ
        only in what the reader reads. `search_query=` retrieves with another text than the question, here
        the next question, so "other Q" reads real slots of the wrong passages; `method="closed-book"`
        reads none. A first, throw-away question warms the reader up so that the timings are comparable.
        """
    ),
    code(
        """
        pipeline.ask(examples[0].question, method="full", k=1, max_new_tokens=1)  # warm-up

        rows = []
        for number, example in enumerate(examples, start=1):
            other_question = examples[number % len(examples)].question
            for label, (method, passages) in RUNS.items():
                search_query = other_question if passages == "other" else None
                answer = pipeline.ask(
                    example.question, method=method, k=K, max_new_tokens=MAX_NEW_TOKENS, search_query=search_query
                )
                stats = answer.stats
                rows.append(
                    {
                        "question": number,
                        "method": label,
                        "answer": answer.answer,
                        "gold": " | ".join(example.answers),
                        "f1": f1_score(answer.answer, example.answers),
                        "em": exact_match(answer.answer, example.answers),
                        "latency_s": answer.timings["total"],
                        "read_s": answer.timings["read"],
                        # What the reader reads: slots for comprexit, the passages' tokens for full.
                        "reader_inputs": stats.slots if method == "comprexit" else stats.context_tokens,
                        "context_tokens": stats.context_tokens,
                        "store_hits": stats.store_hits,
                    }
                )
        print(f"{len(rows)} answers")
        """
    ),
    md("## Results"),
    code(
        """
        def shorten(text, width=28):
            text = " ".join(str(text).split())
            return text if len(text) <= width else text[: width - 1] + "…"


        header = (
            f"{'Q':>2}  {'method':<11}  {'answer':<28}  {'gold':<20}  {'F1':>4}  {'EM':>3}  "
            f"{'latency s':>9}  {'reader inputs':>13}  {'source tokens':>13}  {'stored':>6}"
        )
        print(header)
        print("-" * len(header))
        for row in rows:
            print(
                f"{row['question']:>2}  {row['method']:<11}  {shorten(row['answer']):<28}  "
                f"{shorten(row['gold'], 20):<20}  {row['f1']:4.2f}  {row['em']:3.0f}  {row['latency_s']:9.2f}  "
                f"{row['reader_inputs']:13d}  {row['context_tokens']:13d}  {row['store_hits']:>6}"
            )

        print()
        summary = {}
        for label in RUNS:
            mine = [row for row in rows if row["method"] == label]
            summary[label] = {
                key: sum(row[key] for row in mine) / len(mine) for key in ("f1", "em", "latency_s", "reader_inputs")
            }
            values = summary[label]
            print(
                f"{label:>11}: mean F1 {values['f1']:.2f}, EM {values['em']:.2f}, latency {values['latency_s']:.2f} s, "
                f"{values['reader_inputs']:.0f} context vectors read"
            )
        shrink = summary["full"]["reader_inputs"] / max(summary["comprexit"]["reader_inputs"], 1)
        print(f"The reader reads {shrink:.1f}x fewer context vectors from stored slots than from full text.")
        """
    ),
    code(
        """
        colors = {"comprexit": "tab:blue", "full": "tab:gray", "other Q": "tab:orange", "closed-book": "tab:olive"}
        numbers = sorted({row["question"] for row in rows})
        width = 0.2
        offsets = [width * (i - (len(RUNS) - 1) / 2) for i in range(len(RUNS))]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, key, title in zip(
            axes,
            ("f1", "latency_s", "reader_inputs"),
            ("F1 vs. gold", "latency (s)", "context vectors read"),
            strict=True,
        ):
            for offset, label in zip(offsets, RUNS, strict=True):
                values = [next(r[key] for r in rows if r["question"] == n and r["method"] == label) for n in numbers]
                ax.bar([n + offset for n in numbers], values, width, label=label, color=colors[label])
            ax.set_xticks(numbers, [f"Q{n}" for n in numbers])
            ax.set_title(title)
        axes[0].set_ylim(0, 1.05)
        axes[0].legend()
        fig.suptitle(f"HotpotQA dev, k={K}: stored ComprExIT slots vs. full context, and the two controls")
        fig.tight_layout()
        plt.show()
        """
    ),
    md("The index lived in a temporary directory; remove it."),
    code("workdir.cleanup()"),
]


# ---------------------------------------------------------------------------------------------
# 02: LangChain.
# ---------------------------------------------------------------------------------------------

LANGCHAIN: list[Cell] = [
    md(
        """
        # ComprExIT in LangChain: retriever → compressor → reader, with LCEL

        The `langchain-comprexit` package (in `integrations/langchain`) wraps the library as LangChain
        components:

        * `ComprExITRetriever` — a `BaseRetriever` over the project's dense retriever (all-MiniLM-L6-v2 +
          faiss);
        * `ComprExITDocumentCompressor` — a `BaseDocumentCompressor` that compresses documents into
          ComprExIT soft slots, kept in a slot store, and tags each document with a slot record in
          `metadata["comprexit"]` (a key and sizes, never tensors);
        * `ComprExITReader` — an LCEL `Runnable` that answers `{"question", "documents"}` by reading the
          documents' slots with the frozen reader LLM.

        Install it with `pip install -e integrations/langchain`. This notebook indexes the paragraphs of
        two HotpotQA dev questions with a `RAGPipeline` (which compresses them once, at indexing time),
        chains the three components with LCEL and answers the two questions from the stored slots.

        Data comes from `comprexit_rag.data.data_root()` (`COMPREXIT_DATA` overrides).
        """
    ),
    md(HEAD_NOTE),
    code(SETUP),
    code(
        """
import tempfile

from langchain_comprexit import (
    SLOT_METADATA_KEY,
    ComprExITDocumentCompressor,
    ComprExITReader,
    ComprExITRetriever,
)
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from comprexit_rag.evaluation.metrics import f1_score
from comprexit_rag.rag import RAGPipeline

QUESTIONS = 2
K = 3  # documents retrieved per question
MAX_NEW_TOKENS = 16
"""
    ),
    code(LOAD_QUESTIONS),
    md(
        """
        ## Index once: embeddings and slots

        `RAGPipeline.index()` embeds the paragraphs for retrieval and stores their slots; the LangChain
        components below share its retriever, compressor and slot store (`from_pipeline`), so answering
        compresses nothing.
        """
    ),
    code(
        """
        workdir = tempfile.TemporaryDirectory(prefix="comprexit-langchain-")
        pipeline = RAGPipeline.build(workdir.name)
        report = pipeline.index(passages)
        print(f"{report.added} paragraphs indexed, {report.compressed} compressed in {report.seconds:.1f} s")
        """
    ),
    md("## The three components"),
    code(
        """
        retriever = ComprExITRetriever.from_pipeline(pipeline, k=K)
        compressor = ComprExITDocumentCompressor.from_pipeline(pipeline)
        reader = ComprExITReader.from_pipeline(
            pipeline, compressor=compressor, max_new_tokens=MAX_NEW_TOKENS, return_stats=True
        )
        """
    ),
    md(
        """
        ## The LCEL chain

        The question goes to the retriever; the retrieved documents go through the compressor (which
        finds their slots in the store and records the slot key in their metadata); the reader answers
        from those slots. With `langchain-classic` installed, `ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=retriever)` does the first two steps in one.
        """
    ),
    code(
        """
        def compress(inputs):
            return compressor.compress_documents(inputs["documents"], query=inputs["question"])


        chain = (
            {"documents": retriever, "question": RunnablePassthrough()}
            | RunnablePassthrough.assign(documents=RunnableLambda(compress))
            | reader
        )
        print(" | ".join(type(step).__name__ for step in chain.steps))
        """
    ),
    code(
        """
        outputs = []
        for number, example in enumerate(examples, start=1):
            output = chain.invoke(example.question)
            outputs.append(output)
            stats = output.response_metadata["comprexit_stats"]  # return_stats=True: an AIMessage
            print(f"Q{number}: answer {output.content!r}, gold {' | '.join(example.answers)!r}")
            print(
                f"    F1 {f1_score(output.content, example.answers):.2f}; read {stats['slots']} slots instead of "
                f"{stats['context_tokens']} tokens; {stats['store_hits']} of {stats['documents']} documents "
                f"found in the store; {stats['timings']['total']:.2f} s"
            )
        """
    ),
    md("The chain answers exactly as `RAGPipeline.ask` does over the same index:"),
    code(
        """
        expected = pipeline.ask(examples[0].question, k=K, max_new_tokens=MAX_NEW_TOKENS)
        print("same answer as RAGPipeline.ask:", expected.answer == outputs[0].content)
        """
    ),
    md("The compressed documents carry a slot record (a store key and sizes), not tensors:"),
    code(
        """
        documents = retriever.invoke(examples[0].question)
        for document in compressor.compress_documents(documents, query=examples[0].question):
            record = document.metadata[SLOT_METADATA_KEY]
            print(
                f"{record['slot_key'][:12]}…  {record['tokens']:4d} tokens -> {record['slots']:3d} slots "
                f"(ratio {record['ratio']}, {record['method']})"
            )
        """
    ),
    md("The index lived in a temporary directory; remove it."),
    code("workdir.cleanup()"),
]


# ---------------------------------------------------------------------------------------------
# 03: LlamaIndex.
# ---------------------------------------------------------------------------------------------

LLAMA_INDEX: list[Cell] = [
    md(
        """
        # ComprExIT in LlamaIndex: VectorStoreIndex + node postprocessor + query engine

        `llama-index-postprocessor-comprexit` (in `integrations/llama_index`) provides, under
        `llama_index.postprocessor.comprexit`:

        * `ComprExITEmbedding` — the embedded all-MiniLM-L6-v2 as a LlamaIndex embedding model, so a
          `VectorStoreIndex` builds offline;
        * `ComprExITNodePostprocessor` — compresses retrieved nodes once into ComprExIT soft slots, keeps
          them in a slot store and annotates each node with its slot key and sizes (never tensors);
        * `ComprExITQueryEngine` / `build_query_engine` — retriever → postprocessor → the frozen reader
          LLM, answering from the slots.

        Install it with `pip install -e integrations/llama_index`. This notebook builds a
        `VectorStoreIndex` over the paragraphs of two HotpotQA dev questions and answers them, with no
        network access and no remote LLM.

        Data comes from `comprexit_rag.data.data_root()` (`COMPREXIT_DATA` overrides).
        """
    ),
    md(HEAD_NOTE),
    code(SETUP),
    code(
        """
import tempfile

from llama_index.core import VectorStoreIndex
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.comprexit import (
    SLOT_KEY,
    SLOTS_KEY,
    TOKENS_KEY,
    ComprExITEmbedding,
    ComprExITNodePostprocessor,
    build_query_engine,
)

from comprexit_rag.evaluation.metrics import f1_score

QUESTIONS = 2
K = 3  # nodes retrieved per question
MAX_NEW_TOKENS = 16
"""
    ),
    code(LOAD_QUESTIONS),
    md("## A `VectorStoreIndex` with the offline embedding"),
    code(
        """
        nodes = [TextNode(text=passage.formatted()) for passage in passages]
        index = VectorStoreIndex(nodes, embed_model=ComprExITEmbedding())
        print(f"{len(nodes)} nodes indexed")
        """
    ),
    md(
        """
        ## The ComprExIT postprocessor, filled once

        `from_defaults` loads the embedded SmolLM2 backbone and the default head; `store_dir` keeps the
        slots on disk. Running the postprocessor over every node now compresses each paragraph once, as
        indexing would; queries then find their nodes' slots in the store.
        """
    ),
    code(
        """
        workdir = tempfile.TemporaryDirectory(prefix="comprexit-llama-index-")
        postprocessor = ComprExITNodePostprocessor.from_defaults(store_dir=workdir.name)
        annotated = postprocessor.postprocess_nodes([NodeWithScore(node=node) for node in nodes])
        slots = sum(node.node.metadata[SLOTS_KEY] for node in annotated)
        tokens = sum(node.node.metadata[TOKENS_KEY] for node in annotated)
        print(f"{len(annotated)} nodes compressed: {tokens} tokens -> {slots} slots")
        """
    ),
    md("## Retriever → postprocessor → reader: the query engine"),
    code(
        """
        query_engine = build_query_engine(index, postprocessor, similarity_top_k=K, max_new_tokens=MAX_NEW_TOKENS)

        for number, example in enumerate(examples, start=1):
            response = query_engine.query(example.question)
            answer, stats = str(response).strip(), response.metadata
            print(f"Q{number}: answer {answer!r}, gold {' | '.join(example.answers)!r}")
            print(
                f"    F1 {f1_score(answer, example.answers):.2f}; read {stats['slots']} slots instead of "
                f"{stats['context_tokens']} tokens; {stats['store_hits']} of {len(response.source_nodes)} nodes "
                f"found in the store; {stats['timings']['total']:.2f} s"
            )
        """
    ),
    md("The source nodes carry slot keys and sizes in their metadata, not tensors:"),
    code(
        """
        for source in response.source_nodes:
            metadata = source.node.metadata
            print(
                f"score {source.score:.3f}  {metadata[SLOT_KEY][:12]}…  {metadata[TOKENS_KEY]:4d} tokens -> "
                f"{metadata[SLOTS_KEY]:3d} slots"
            )
        """
    ),
    md("The slots lived in a temporary directory; remove it."),
    code("workdir.cleanup()"),
]


# ---------------------------------------------------------------------------------------------
# 04: inside the compressor.
# ---------------------------------------------------------------------------------------------

INSIDE: list[Cell] = [
    md(
        """
        # Inside the ComprExIT compressor

        ComprExIT compresses a passage in two steps over the frozen backbone's hidden states:

        1. **depth**: each token mixes the hidden states of all `L+1` layers with learned, token-dependent
           weights (`layer_weights`, `[tokens, L+1]`);
        2. **width**: within each 128-token window, an optimal-transport plan (Sinkhorn) assigns the tokens to
           `ceil(tokens / ratio)` slots (`transport_plans`, one `[tokens, slots]` matrix per window).

        `compress(..., return_details=True)` returns both. This notebook plots them for one HotpotQA
        paragraph, then the F1-vs-ratio curve of the benchmark grid if its results are present.
        """
    ),
    md(HEAD_NOTE),
    code(SETUP),
    code(
        """
import json
from pathlib import Path

import matplotlib.pyplot as plt

from comprexit_rag import ComprExITCompressor
from comprexit_rag.data import data_root, load_split

RATIO = 4
"""
    ),
    md(
        """
        ## The compressor

        `ComprExITCompressor.from_pretrained()` loads the embedded backbone and the shipped head.
        """
    ),
    code(
        """
        compressor = ComprExITCompressor.from_pretrained(device="cpu")
        backbone = compressor.backbone
        print(f"{backbone.name}: {backbone.model.config.num_hidden_layers} layers; head config {compressor.config}")
        """
    ),
    md("## One passage: the first supporting paragraph of the first HotpotQA dev question"),
    code(
        """
        example = load_split("hotpotqa", "dev", data_root())[0]
        passage = example.gold_passages()[0]
        soft = compressor.compress([passage.formatted()], ratio=RATIO, return_details=True)
        details = soft.details[0]
        print(
            f"{soft.num_tokens} tokens -> {soft.num_slots} slots (ratio {soft.ratio:.2f}); "
            f"layer weights {tuple(details.layer_weights.shape)}; "
            f"{len(details.transport_plans)} window(s): {[tuple(p.shape) for p in details.transport_plans]}"
        )
        """
    ),
    md(
        """
        ## Depth: which layers the slots draw on

        Mean over the passage's tokens of the depth-wise layer weights (layer 0 is the embedding output).
        """
    ),
    code(
        """
        layer_weights = details.layer_weights.float().mean(dim=0)
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.bar(range(len(layer_weights)), layer_weights.tolist(), color="tab:blue")
        ax.axhline(1 / len(layer_weights), color="gray", linestyle=":", label="uniform")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("mean weight")
        ax.set_title("Depth-wise layer weights, mean over tokens")
        ax.legend()
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        ## Width: the transport plan of the first window

        Each row is a token of the window, each column a slot; a cell's colour is the transport mass sent
        from that token to that slot (a Sinkhorn plan: its rows and columns sum, approximately, to the
        tokens' and the slots' masses).
        """
    ),
    code(
        """
        plan = details.transport_plans[0].float()
        tokens = details.token_ids[: plan.shape[0]]
        labels = [repr(backbone.tokenizer.decode([token]))[1:-1] for token in tokens]

        fig, ax = plt.subplots(figsize=(max(5, 0.3 * plan.shape[1] + 2), max(4, 0.16 * plan.shape[0])))
        image = ax.imshow(plan.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_xticks(range(plan.shape[1]))
        ax.tick_params(axis="x", labelsize=6)
        ax.set_xlabel("slot")
        ax.set_ylabel("token")
        ax.set_title(f"Transport plan, window 0 ({plan.shape[0]} tokens x {plan.shape[1]} slots)")
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        ## F1 vs. compression ratio (benchmark grid)

        `benchmarks/run_grid.py` writes one JSON line per (dataset, method, ratio) to
        `benchmarks/results/grid.jsonl`. When that file is present, plot F1 against the ratio for every
        method evaluated at several ratios, with the ratio-free methods (full context, closed book) as
        horizontal references.
        """
    ),
    code(
        """
        grid_path = next(
            (
                base / "benchmarks" / "results" / "grid.jsonl"
                for base in (Path.cwd(), *Path.cwd().parents)
                if (base / "benchmarks" / "results" / "grid.jsonl").is_file()
            ),
            None,
        )
        grid = []
        if grid_path is None:
            print("benchmarks/results/grid.jsonl is absent (benchmarks/run_grid.py writes it): skipping the plot.")
        else:
            with open(grid_path, encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line) if line.strip() else {}
                    if isinstance(row.get("f1"), int | float) and "dataset" in row and "label" in row:
                        grid.append(row)
            print(f"{len(grid)} scored rows in {grid_path}")
        """
    ),
    code(
        """
        if not grid:
            print("No F1-vs-ratio data to plot.")
        else:
            datasets = sorted({row["dataset"] for row in grid})
            fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
            for ax, dataset in zip(axes[0], datasets, strict=True):
                mine = [row for row in grid if row["dataset"] == dataset]
                references = iter(["--", ":", "-.", (0, (5, 1))] * 4)
                for label in sorted({row["label"] for row in mine}):
                    points = sorted((row["ratio"], row["f1"]) for row in mine if row["label"] == label and row["ratio"])
                    if points:
                        ax.plot(*zip(*points, strict=True), marker="o", label=label)
                    else:  # a method without a ratio (full context, closed book): a horizontal reference
                        reference = next(row["f1"] for row in mine if row["label"] == label)
                        ax.axhline(reference, linestyle=next(references), linewidth=1.2, color="black", label=label)
                ratios = sorted({row["ratio"] for row in mine if row["ratio"]})
                ax.set_xscale("log", base=2)
                ax.set_xticks(ratios, [str(ratio) for ratio in ratios])
                ax.minorticks_off()
                ax.set_xlabel("compression ratio (tokens per slot)")
                ax.set_ylabel("F1")
                ax.set_title(dataset)
                ax.legend(fontsize=7)
            fig.tight_layout()
            plt.show()
        """
    ),
]


NOTEBOOKS: dict[str, list[Cell]] = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_langchain.ipynb": LANGCHAIN,
    "03_llama_index.ipynb": LLAMA_INDEX,
    "04_inside_the_compressor.ipynb": INSIDE,
}


def build(cells: list[Cell]) -> nbformat.NotebookNode:
    notebook = new_notebook(
        cells=[new_markdown_cell(source) if kind == "md" else new_code_cell(source) for kind, source in cells],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    # Stable ids keep regenerated files byte-identical.
    stem = "cell"
    for number, cell in enumerate(notebook.cells):
        cell["id"] = f"{stem}-{number:02d}"
    nbformat.validate(notebook)
    return notebook


def render(cells: list[Cell]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def stripped(path: Path) -> str:
    """The committed notebook without its outputs and execution counts, as :func:`render` writes it."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    notebook.metadata = build([]).metadata  # the kernel adds its own language_info on execution
    return nbformat.writes(notebook) + "\n"


def execute(notebook: nbformat.NotebookNode) -> None:
    """Run every cell in a fresh kernel whose working directory is this folder.

    The kernel inherits this process's environment, with the weight-loading bars of transformers
    off (they would fill the committed outputs).
    """
    import os

    import nbclient

    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        record_timing=False,  # timestamps would change the files on every run
        resources={"metadata": {"path": str(HERE)}},
    )
    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        client.execute()
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS")
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous
    notebook.metadata = build([]).metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    parser.add_argument("names", nargs="*", help="notebooks to write (default: all)")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        if args.names and name not in args.names:
            continue
        path = HERE / name
        if args.check:
            if not path.is_file() or stripped(path) != render(cells):
                stale.append(name)
            continue
        notebook = build(cells)
        if not args.no_execute:
            execute(notebook)
        path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python examples/_build_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
