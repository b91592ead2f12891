"""The ``comprexit-rag`` command line: one sub-command per module in ``comprexit_rag.commands``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import ComprExITError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comprexit-rag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args) or 0
    except ComprExITError as error:
        print(f"comprexit-rag {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"comprexit-rag {args.command}: interrupted; committed work is kept (rerun `index` to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
