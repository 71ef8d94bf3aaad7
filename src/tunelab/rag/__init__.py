"""Retrieval-augmented training: a passage corpus, a dense retriever over it, and the REPLUG LSR loss that trains
the retriever from the generator's likelihood of the answer. The objective that uses them is
`tunelab.objectives.rag`."""

from tunelab.rag.data import Passage, QARow, read_corpus, read_questions
from tunelab.rag.losses import replug_kl
from tunelab.rag.retriever import Retriever, load_retriever, save_retriever

__all__ = [
    "Passage",
    "QARow",
    "Retriever",
    "load_retriever",
    "read_corpus",
    "read_questions",
    "replug_kl",
    "save_retriever",
]
