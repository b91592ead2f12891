"""Names of the evaluation and training methods, free of heavy imports: the CLI parser reads them."""

EVAL_METHODS = ("comprexit", "closed-book", "full", "full-tuned", "truncate", "mean-pool", "comi")
"""What ``comprexit-rag eval --method`` can score."""
EVAL_RATIO_METHODS = ("comprexit", "truncate", "mean-pool", "comi")
"""The evaluation methods that take a compression ratio."""
TRAIN_METHODS: tuple[str, ...] = ("comprexit", "mean-pool", "comi", "full-tuned")
"""What ``comprexit-rag train --method`` can train."""
