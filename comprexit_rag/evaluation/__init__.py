"""Evaluation: SQuAD-style QA metrics (``metrics``), the methods it compares (``methods``) and the harness."""
