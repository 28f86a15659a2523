"""LaViC as evaluation methods: the full method, its ablations, and free generation.

One scoring method per stage-2 variant (:data:`lavic_ray.variants.VARIANTS`: ``lavic``,
``lavic-title-only``, ``lavic-no-distill``) ranks candidates by likelihood with whichever
formulation the run was trained with, read from its ``config.yaml``. ``lavic-generate``
decodes an answer greedily from the ``lavic`` run and parses an item ID from it
(``eval.generate``: the paper's protocol, or lavic-ray's parser).

Each needs ``eval.runs.<method>`` (or ``lavic evaluate --stage2 DIR --table FILE``).

Where the model runs: when Ray is up (a job, the quickstart), the conversations go to a Ray
Data actor pool (``eval.resources``: actors, CPUs and GPUs per actor, device, conversations
per batch) - each actor loads the run once, where the accelerators are; the driver only
collects scores. Without Ray (``lavic evaluate`` on one machine) this process scores them.
"""

from __future__ import annotations

import json
import logging

from lavic_ray import console
from lavic_ray.config import ActorPool, LavicRun, actor_pool
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.methods import Method, ScoringMethod
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)


class RunActor:
    """Callable class for ``map_batches``: one trained stage-2 run, loaded once per actor.

    Args:
        stage2_dir, table: The run (``lavic_ray.config.LavicRun``).
        pool: ``eval.resources`` (as a dict; the device is resolved here, in the actor).
        mode: ``score`` (every candidate's score) or ``generate`` (the decoded answer text).
        max_new_tokens: Tokens to decode (``generate``).
    """

    def __init__(self, stage2_dir: str, table: str | None, pool: dict | None = None, mode: str = "score",
                 max_new_tokens: int = 16):
        import torch

        from lavic_ray.model.recommender import Recommender

        pool = ActorPool(**(pool or {}))
        if pool.device != "cuda" and pool.gpus_per_actor == 0:
            torch.set_num_threads(max(1, int(pool.cpus_per_actor)))
        self.run = Recommender(stage2_dir, table, device=pool.resolved_device())
        self.mode, self.max_new_tokens = mode, max_new_tokens

    def __call__(self, batch: dict) -> dict:
        requests = [(str(c), [tuple(x) for x in json.loads(cands)]) for c, cands in zip(batch["context"], batch["candidates"])]
        if self.mode == "score":
            out = [json.dumps(s) for s in self.run.score(requests)]
        else:
            out = [json.dumps(t) for t in self.run.generate(requests, self.max_new_tokens)]
        return {"i": list(batch["i"]), "out": out}


def run_requests(run: LavicRun, requests: list[tuple[str, list[tuple[str, str]]]], pool: ActorPool, label: str,
                 mode: str = "score", max_new_tokens: int = 16) -> list:
    """Every request through a trained run: on a Ray Data actor pool when Ray is up, else in this process."""
    import ray

    out: list = [None] * len(requests)
    with console.get().progress(len(requests), label, "conversation") as bar:
        if ray.is_initialized():
            rows = [{"i": i, "context": c, "candidates": json.dumps(cands)} for i, (c, cands) in enumerate(requests)]
            ds = ray.data.from_items(rows).map_batches(
                RunActor, fn_constructor_kwargs={"stage2_dir": run.stage2_dir, "table": run.table, "pool": pool.model_dump(),
                                                 "mode": mode, "max_new_tokens": max_new_tokens},
                batch_size=pool.batch_size, batch_format="numpy", compute=actor_pool(pool.actors),
                num_cpus=pool.cpus_per_actor, num_gpus=pool.gpus_per_actor or None)
            for b in ds.iter_batches(batch_format="numpy", batch_size=None):
                for i, o in zip(b["i"], b["out"]):
                    out[int(i)] = json.loads(o)
                bar.update(len(b["i"]))
            return out
        actor = RunActor(run.stage2_dir, run.table, pool.model_dump(), mode, max_new_tokens)
        for start in range(0, len(requests), pool.batch_size):
            chunk = list(range(start, min(start + pool.batch_size, len(requests))))
            res = actor({"i": chunk, "context": [requests[i][0] for i in chunk],
                         "candidates": [json.dumps(requests[i][1]) for i in chunk]})
            for i, o in zip(res["i"], res["out"]):
                out[i] = json.loads(o)
            bar.update(len(chunk))
    return out


class _LaViCBase:
    needs_items = True
    #: the stage-2 run it uses when ``eval.runs`` has none under its own name
    default_run: str | None = None

    def _run(self) -> LavicRun:
        runs = self.ctx.config.eval.runs
        name = self.name if self.name in runs else self.default_run
        if name not in runs:
            raise InvalidInput(f"method {self.name!r} needs a trained stage 2: set eval.runs.{self.name}.stage2_dir (and .table), "
                               f"or pass --stage2 DIR --table FILE")
        return runs[name]

    def _requests(self, convs, key) -> list[tuple[str, list[tuple[str, str]]]]:
        return [(conv.context, [(c, self.ctx.catalog[c].title) for c in conv.candidate_list(key)]) for conv in convs]


class LaViCScoring(_LaViCBase, ScoringMethod):
    """A trained stage-2 variant, scoring every candidate by likelihood."""

    def score(self, convs, key):
        return run_requests(self._run(), self._requests(convs, key), self.ctx.config.eval.resources, f"evaluate {self.name}")


class LaViCGenerate(_LaViCBase, Method):
    """Greedy generation after the listwise prompt (``eval.generate``: tokens, and the parser: any catalog ID,
    ISBNs too, or the reference's regex)."""

    name = "lavic-generate"
    default_run = "lavic"

    def rank(self, convs, key):
        from lavic_ray.model.scoring import parse_answer

        run = self._run()
        from lavic_ray.config import load_config

        s2 = load_config(f"{run.stage2_dir}/config.yaml").stage2
        if s2.formulation != "listwise":
            raise InvalidInput(f"lavic-generate needs a listwise stage 2 (a {s2.formulation} model does not answer an ID)")
        g = self.ctx.config.eval.generate
        requests = self._requests(convs, key)
        texts = run_requests(run, requests, self.ctx.config.eval.resources, f"evaluate {self.name}", "generate", g.max_new_tokens)
        ids = set(self.ctx.catalog.ids())
        return [parse_answer(t, [c for c, _ in cands], ids, letters=s2.answer == "letter", pattern=g.id_pattern)
                for t, (_, cands) in zip(texts, requests)]


#: The LaViC methods by name: one per stage-2 variant, and free generation.
LAVIC_METHODS: dict[str, type[Method]] = {
    **{v: type(v.replace("-", "_"), (LaViCScoring,), {"name": v, "__doc__": VARIANTS[v].summary}) for v in VARIANTS},
    LaViCGenerate.name: LaViCGenerate,
}
