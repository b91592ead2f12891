"""Sub-commands of the CLI. Each module exposes ``add_parser(subparsers)`` that sets ``run``."""

from . import ask, demo, evaluate, index, train

COMMANDS = [train, evaluate, index, ask, demo]
