"""The ``Retriever`` deployment: a text index over the catalog (SBERT by default), top-k per query.

Concurrent queries are encoded together (``@serve.batch``). The index is loaded
from a saved directory (``lavic index``) or built over the catalog's titles when
the replica starts.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from lavic_ray.serve.batching import isolated, unwrap

log = logging.getLogger(__name__)


class RetrieverCore:
    """The retrieval work of a replica, without Ray (used by the deployment and by tests)."""

    def __init__(self, catalog: str, index: str | None = None, kind: str = "sbert", sbert_model: str | None = None):
        from lavic_ray.config import RetrievalConfig
        from lavic_ray.data.layout import Catalog
        from lavic_ray.retrieval import DEFAULT_SBERT, Retriever, make_retriever

        if index:
            self.index = Retriever.load(index)
        else:
            rc = RetrievalConfig(sbert_model=sbert_model or DEFAULT_SBERT)
            self.index = make_retriever(kind, rc).index_items(list(Catalog.load(catalog)))
        log.info("retriever ready: %s over %d items", self.index.kind, len(self.index.item_ids))

    def search(self, queries: list[str], ks: list[int], excludes: list[list[str]]) -> list[list[tuple[str, float]]]:
        """Top ``k`` per query, skipping each query's excluded IDs."""
        widest = max(k + len(ex) for k, ex in zip(ks, excludes))
        hits = self.index.search(queries, k=widest)
        out = []
        for h, k, ex in zip(hits, ks, excludes):
            skip = set(ex)
            out.append([(i, s) for i, s in h if i not in skip][:k])
        return out


# check_health (a one-query retrieval) every 10 s; a replica that fails it or takes over 30 s is replaced
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10,
                  health_check_timeout_s=30)
class Retriever:
    """Ray Serve deployment around :class:`RetrieverCore`."""

    def __init__(self, catalog: str, index: str | None = None, kind: str = "sbert", sbert_model: str | None = None,
                 batch_size: int = 32):
        self.core = RetrieverCore(catalog, index, kind, sbert_model)
        self._search_batch.set_max_batch_size(batch_size)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _search_batch(self, requests: list[tuple[str, int, list[str]]]) -> list:
        return await asyncio.get_running_loop().run_in_executor(None, isolated, self._search, requests, "retriever")

    def _search(self, requests: list[tuple[str, int, list[str]]]) -> list[list[tuple[str, float]]]:
        queries, ks, excludes = (list(x) for x in zip(*requests))
        return self.core.search(queries, ks, excludes)

    async def search(self, query: str, k: int, exclude: list[str] | None = None) -> list[tuple[str, float]]:
        return unwrap(await self._search_batch((query, k, list(exclude or []))))

    def check_health(self) -> None:
        """Serve's health check: the index answers a query (a replica that cannot is replaced)."""
        self.core.search(["health check"], [1], [[]])
