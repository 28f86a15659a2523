"""The ``Reranker`` deployment: LaViC + the stage-2 adapter + the item embedding table.

Each replica loads a :class:`lavic_ray.model.recommender.Recommender` once and
scores candidate lists in batches: concurrent requests are gathered by
``@serve.batch`` and share one prefix pass (left-padded) and chunked candidate
continuations. Item vectors come from the table; the vision tower never runs on
a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ray import serve

from lavic_ray.data.records import Turn
from lavic_ray.serve.batching import isolated, unwrap

HEALTH_CONVERSATION = "<submission>health check</submission>"
#: Serve asks every 10 s; a scoring call (a 7B forward pass) runs at most this often, and never while requests are
#: answered (each answered batch proves the model works)
DEEP_CHECK_EVERY_S = 600.0

log = logging.getLogger(__name__)


# check_health every 10 s: cheap (the model answered within DEEP_CHECK_EVERY_S, or a one-candidate scoring call
# proves it now); a replica that fails it or takes over 30 s is replaced
@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16, health_check_period_s=10,
                  health_check_timeout_s=30)
class Reranker:
    """Ray Serve deployment: ``rerank(turns, [(item_id, title), ...]) -> scores``."""

    def __init__(self, stage2_dir: str, table: str | None, device: str = "cpu", dtype: str | None = None,
                 checkpoint: str | None = None, batch_size: int = 8, batch_wait_s: float = 0.01,
                 torch_threads: int | None = None, merge_lora: bool = True):
        import torch

        from lavic_ray.model.recommender import Recommender

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.core = Recommender(stage2_dir, table, device=device, dtype=dtype, checkpoint=checkpoint, merge_lora=merge_lora)
        some = self.core.table.ids[0] if self.core.table is not None and len(self.core.table) else "B000000000"
        self.probe = (some, "health check")
        self._rerank_batch.set_max_batch_size(batch_size)
        self._rerank_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.batches = 0
        self.deep_checks = 0
        self.last_answered = time.monotonic()  # the model was just loaded
        log.info("reranker ready: %s", self.core.describe())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _rerank_batch(self, requests: list[tuple[str | list[Turn], list[tuple[str, str]]]]) -> list:
        self.batches += 1
        out = await asyncio.get_running_loop().run_in_executor(None, isolated, self.core.score, requests, "reranker")
        if not all(isinstance(o, BaseException) for o in out):
            self.last_answered = time.monotonic()
        return out

    async def rerank(self, conv: str | list[Turn], candidates: list[tuple[str, str]]) -> list[float]:
        """Scores of the candidates for a conversation (its raw context text, or its turns)."""
        return unwrap(await self._rerank_batch((conv, candidates)))

    def info(self) -> dict:
        return {**self.core.describe(), "pid": os.getpid(), "batches": self.batches}

    def check_health(self) -> None:
        """Serve's health check, cheap: the model answered a request in the last ``DEEP_CHECK_EVERY_S``, or it
        answers a one-candidate request now (a replica that cannot is replaced)."""
        if time.monotonic() - self.last_answered < DEEP_CHECK_EVERY_S:
            return
        self.deep_checks += 1
        self.core.score([(HEALTH_CONVERSATION, [self.probe])])
        self.last_answered = time.monotonic()
