"""``comprexit-rag teacher-qa``: QA training pairs for unlabelled passages, answered by a teacher (resumable)."""

from __future__ import annotations

import argparse
import json

from ._args import positive_int

# comprexit_rag.training.teacher_qa.SOURCES, repeated here: parsing the command line imports no torch.
SOURCES = ("2wiki", "wikipedia")

NAME = "teacher-qa"
HELP = "write QA training pairs for unlabelled passages, answered by the teacher reading them (reruns resume)"
DESCRIPTION = """\
For each of the first --limit passages of --source, the frozen reader writes a question about the passage,
the teacher (the reader reading the raw passage through the reader adapter of --teacher, or the frozen
reader when it has none) answers it with and without the passage, and the pair is kept when the answer
is a span of the passage and differs from the closed-book one. Passages of the evaluation splits are left
out. Kept pairs go to --out (JSON lines), counts and the teacher's identity to the manifest
beside it. Rerunning resumes; a larger --limit goes on. A training run reads the file with
--qa-families ... teacher:FILE.
"""


def run(args: argparse.Namespace) -> int:
    from ..backbone import Backbone
    from ..training.teacher_qa import Teacher, source_passages, write_teacher_qa

    passages = source_passages(args.source, args.data)  # a generator: the data is checked when it is read
    backbone = Backbone.from_pretrained(args.backbone, device=args.device)
    teacher = Teacher.from_checkpoint(args.teacher, backbone)
    manifest = write_teacher_qa(
        args.out,
        teacher,
        passages,
        source=args.source,
        limit=args.limit,
        batch_size=args.batch_size,
        checkpoint=args.teacher,
    )
    print(json.dumps({key: manifest[key] for key in ("passages_read", "kept", "dropped", "seconds")}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        required=True,
        help="checkpoint directory of a trained head (its reader_adapter/ reads the passages; without one the "
        "frozen reader does), e.g. comprexit_rag/pretrained/comprexit-smollm2-135m",
    )
    parser.add_argument("--source", choices=SOURCES, required=True, help="2wiki passages or AB-AD Wikipedia windows")
    parser.add_argument("--limit", type=positive_int, required=True, help="read the first N passages of the source")
    parser.add_argument("--out", required=True, help="JSON-lines file of kept pairs (created, or resumed)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="passages per generation batch")
    parser.add_argument("--data", help="data directory (default: $COMPREXIT_DATA or ../shared/data)")
    parser.add_argument("--backbone", help="HF causal-LM name or path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
