"""Make a trained ComprExIT run the packaged default (maintainers' step after a GPU session).

    python scripts/ship_head.py /tmp/s19/sft/final --recorded-output-dir runs/sft-continue \
        --recorded-init-from runs/sft-mixed/final --recorded-distill-teacher runs/full-lora/final

Reads the run's ``final`` directory (head + ``reader_adapter/``) on the CPU with the embedded default
backbone, which refuses a head or adapter trained for another backbone, and writes into ``--to``:

- ``config.json`` + ``model.safetensors``: the head, its fingerprint completed with the weights hash of
  the backbone it is checked against here (a GPU machine's run may not record it), and its training
  record with the run's machine-local paths (output, start, distillation teacher) replaced by the ones
  the model card's commands use;
- ``reader_adapter/``: the adapter re-saved in bfloat16 (half the size; loading casts it back).

The model card (``README.md``) is left as it is: update its tables from the run's results, then check
the bfloat16 adapter against the run's with the command printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch

from comprexit_rag.backbone import Backbone
from comprexit_rag.checkpoint import CONFIG_NAME, WEIGHTS_NAME, check_fingerprint, fingerprint_from_metadata
from comprexit_rag.methods.comprexit.head import DEFAULT_HEAD, ComprExITHead
from comprexit_rag.reading.adapter import ADAPTER_DIR, ReaderAdapter

logger = logging.getLogger("ship_head")
PARITY = (
    "comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open --method comprexit "
    "--limit 40 --checkpoint {checkpoint} --predictions {predictions} --json"
)


def ship(source: Path, destination: Path, recorded_paths: dict[str, str]) -> None:
    backbone = Backbone.from_pretrained(device="cpu")
    ComprExITHead.from_pretrained(source)  # refuses damaged or mismatched weights before anything is written
    metadata = json.loads((source / CONFIG_NAME).read_text())
    check_fingerprint(fingerprint_from_metadata(metadata), backbone.fingerprint, f"The head in {source}")
    adapter = ReaderAdapter.from_pretrained(source / ADAPTER_DIR, backbone)

    metadata["backbone_fingerprint"] = backbone.fingerprint.to_dict()
    run_config = metadata["training"]["config"]
    for key, value in recorded_paths.items():
        run_config[key] = value
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / WEIGHTS_NAME, destination / WEIGHTS_NAME)
    # No final newline, as save_module writes it.
    (destination / CONFIG_NAME).write_text(json.dumps(metadata, indent=2))
    shutil.rmtree(destination / ADAPTER_DIR, ignore_errors=True)
    adapter.save_pretrained(destination / ADAPTER_DIR, dtype=torch.bfloat16)
    logger.info("Shipped %s to %s; compare the bf16 adapter with the run's:", source, destination)
    for checkpoint, predictions in ((destination, "shipped.jsonl"), (source, "run.jsonl")):
        logger.info("  %s", PARITY.format(checkpoint=checkpoint, predictions=predictions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the run's final directory (head + reader_adapter/)")
    parser.add_argument("--to", type=Path, default=DEFAULT_HEAD, help="where to write (default: the shipped head)")
    parser.add_argument("--recorded-output-dir", required=True, help="output_dir as the model card's commands name it")
    parser.add_argument("--recorded-init-from", required=True, help="init_from as the model card's commands name it")
    parser.add_argument(
        "--recorded-distill-teacher", help="distill_teacher as the model card's commands name it (a run that had one)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recorded = {"output_dir": args.recorded_output_dir, "init_from": args.recorded_init_from}
    if args.recorded_distill_teacher:
        recorded["distill_teacher"] = args.recorded_distill_teacher
    ship(args.source, args.to, recorded)


if __name__ == "__main__":
    main()
