"""Names of the answering methods of the RAG pipeline (kept free of heavy imports for the CLI parser)."""

METHODS = ("comprexit", "comi", "full")
