"""The ``comprexit-rag`` command line: one sub-command per module in ``comprexit_rag.commands``.

Parsing imports nothing heavy (torch and transformers load only once a command runs), so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import ComprExITError

DESCRIPTION = """\
Answer questions over your documents with a small LLM that reads compressed passages.

`index` compresses each passage of a corpus once into a few "soft slots" (vectors the reader LLM
reads instead of the passage text) and stores them; `ask` retrieves passages and answers from
their stored slots. `demo` does both on a few HotpotQA questions. `train` and `eval` train and
score the compressor. Everything runs offline on the embedded SmolLM2-135M-Instruct.
"""

EPILOG = "Start with `comprexit-rag demo`. Run `comprexit-rag COMMAND --help` for each command's options."


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' paragraphs and show each option's default (when it has a real one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in help_text
            and action.nargs != 0
        ):
            help_text += " (default: %(default)s)"
        return help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comprexit-rag", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level, with model-loading progress bars"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION, formatter_class=HelpFormatter
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run, parser=subparser)
    return parser


def configure_output(verbose: bool, quiet: bool) -> None:
    """What the commands say on stderr.

    By default the library's own progress messages (``comprexit_rag`` INFO: loading, converting
    the default model, embedding, compressing) are shown, and other libraries' logs and their
    weight-loading bars are not; ``-v`` shows everything, ``-q`` only warnings.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    logging.getLogger("comprexit_rag").setLevel(logging.WARNING if quiet else logging.INFO)
    if not verbose:
        # transformers reads this when it is imported (later, lazily): no "Loading weights" bars.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # already imported (main() called in-process)
            sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(args.verbose, args.quiet)
    try:
        return args.run(args) or 0
    except ComprExITError as error:
        print(f"comprexit-rag {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"comprexit-rag {args.command}: interrupted; committed work is kept (rerun the same command to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
