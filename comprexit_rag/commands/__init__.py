"""Sub-commands of the CLI. Each module declares ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args)``; :func:`comprexit_rag.cli.build_parser` registers them."""

from . import ask, demo, evaluate, index, teacher_qa, train

COMMANDS = [train, teacher_qa, evaluate, index, ask, demo]
