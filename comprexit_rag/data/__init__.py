"""Data loading: records, per-family loaders, the data directory and fixed train/dev splits."""

from comprexit_rag.data.hotpotqa import load_hotpotqa
from comprexit_rag.data.musique import load_musique
from comprexit_rag.data.nq import load_nq_open, load_nq_qed
from comprexit_rag.data.paths import DATA_ENV_VAR, DataNotFoundError, data_root
from comprexit_rag.data.policyqa import load_policyqa
from comprexit_rag.data.records import Passage, QAExample
from comprexit_rag.data.splits import FAMILIES, SPLIT_SIZES, SPLITS, load_split, pretraining_passages
from comprexit_rag.data.squad import load_squad_mrqa
from comprexit_rag.data.text import detokenize, normalize_question
from comprexit_rag.data.twowiki import load_2wiki_corpus
from comprexit_rag.data.wikipedia import iter_wikipedia_documents

__all__ = [
    "DATA_ENV_VAR",
    "FAMILIES",
    "SPLITS",
    "SPLIT_SIZES",
    "DataNotFoundError",
    "Passage",
    "QAExample",
    "data_root",
    "detokenize",
    "iter_wikipedia_documents",
    "load_2wiki_corpus",
    "load_hotpotqa",
    "load_musique",
    "load_nq_open",
    "load_nq_qed",
    "load_policyqa",
    "load_split",
    "load_squad_mrqa",
    "normalize_question",
    "pretraining_passages",
]
