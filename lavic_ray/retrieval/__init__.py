"""Text retrievers over the item catalog (library code used by evaluation, synthesis and serving)."""

from lavic_ray.retrieval.base import Retriever, conversation_query, item_text
from lavic_ray.retrieval.bm25 import BM25Retriever
from lavic_ray.retrieval.sbert import DEFAULT_SBERT, SBERTRetriever

RETRIEVERS: dict[str, type[Retriever]] = {"sbert": SBERTRetriever, "bm25": BM25Retriever}


def make_retriever(kind: str, **kwargs) -> Retriever:
    """Build an empty retriever of ``kind`` (``sbert`` or ``bm25``)."""
    try:
        cls = RETRIEVERS[kind]
    except KeyError:
        raise ValueError(f"unknown retriever {kind!r}; choose one of {sorted(RETRIEVERS)}") from None
    return cls(**kwargs)


__all__ = [
    "BM25Retriever", "DEFAULT_SBERT", "RETRIEVERS", "Retriever", "SBERTRetriever",
    "conversation_query", "item_text", "make_retriever",
]
