"""Text retrievers over the item catalog (library code used by evaluation, synthesis and serving)."""

from __future__ import annotations

from lavic_ray.errors import InvalidInput
from lavic_ray.retrieval.base import Retriever, conversation_query, item_text
from lavic_ray.retrieval.bm25 import BM25Retriever
from lavic_ray.retrieval.sbert import DEFAULT_SBERT, SBERTRetriever

RETRIEVERS: dict[str, type[Retriever]] = {"sbert": SBERTRetriever, "bm25": BM25Retriever}


def make_retriever(kind: str, cfg=None) -> Retriever:
    """An empty retriever of ``kind`` (``sbert`` or ``bm25``), set up from a
    :class:`lavic_ray.config.RetrievalConfig` (its defaults when None)."""
    from lavic_ray.config import RetrievalConfig

    rc = cfg or RetrievalConfig()
    if kind == "sbert":
        return SBERTRetriever(model=rc.sbert_model, device=rc.device, batch_size=rc.batch_size)
    if kind == "bm25":
        return BM25Retriever()
    raise InvalidInput(f"unknown retriever {kind!r}; choose one of {sorted(RETRIEVERS)}")


__all__ = [
    "BM25Retriever", "DEFAULT_SBERT", "RETRIEVERS", "Retriever", "SBERTRetriever",
    "conversation_query", "item_text", "make_retriever",
]
