"""Serving load test on 127.0.0.1: LaViC's reranker (item vectors from the table) against a
naive reranker that re-encodes every candidate's image views on every request (the
reference implementation's serving cost), then autoscaling and a killed replica.

    python bench/serve_load.py                       # the quickstart's artifacts (lavic_runs/quickstart)
    python bench/serve_load.py --workdir DIR --requests 24 --out bench/results/serve_load.json

Phases (one Ray, one machine, traffic bounded in count and time, all to 127.0.0.1):
1. compare: each reranker with exactly 1 replica, at concurrency 1, 4 and 16: throughput,
   p50/p99 latency, failed requests. Both score the same candidates with the same model and
   batching; the naive one computes the 5 vectors of each candidate from its image file
   (decode, LLaVA-Next tiling, vision tower + stage-1 adapter, projector) per request.
   Before timing, the naive vectors are checked against the table's (same numbers).
2. autoscale: the serve config's autoscaling (1 -> 2 reranker replicas): load at concurrency
   16 until a second replica serves, then idle until it is removed; the replica-count timeline.
3. chaos: load at concurrency 4 for 40 s; one reranker replica is killed 5 s in, and a second
   client sends a poisoned request (a lone UTF-16 surrogate, NULs only, a tag-only conversation,
   in turn) every 0.5 s throughout: good requests that failed (and when), the time until
   requests succeed again, and what each poisoned request got (all should be 422).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_naive_reranker(stage1_adapter: str | None, catalog_root: str):
    """A Reranker with the same interface whose vectors come from the images, per request."""
    import torch
    from ray import serve

    from lavic_ray.data.layout import Catalog
    from lavic_ray.model.recommender import Recommender
    from lavic_ray.pipeline.embed import EmbedItems

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
    class NaiveReranker:
        def __init__(self, stage2_dir, table, device="cpu", dtype=None, checkpoint=None, batch_size=8, batch_wait_s=0.01,
                     torch_threads=None):
            if torch_threads:
                torch.set_num_threads(torch_threads)
            self.core = Recommender(stage2_dir, table, device=device, dtype=dtype, checkpoint=checkpoint)
            cfg = self.core.cfg.model
            model = cfg.model_copy(update={"checkpoint": checkpoint or cfg.checkpoint, "dtype": dtype or cfg.dtype})
            self.vision = EmbedItems(model, stage1_adapter, {"device": device})
            cat = Catalog.load(catalog_root)
            self.images = {it.item_id: str(it.primary_image.path) if it.primary_image and it.primary_image.path else ""
                           for it in cat}
            self._rerank_batch.set_max_batch_size(batch_size)
            self._rerank_batch.set_batch_wait_timeout_s(batch_wait_s)
            self.batches = 0

        def lookup(self, ids):
            import numpy as np

            t = self.vision.embed(list(ids), [self.images[i] for i in ids])
            flat = np.stack([np.asarray(v, dtype=np.float32) for v in t.column("vectors").to_pylist()])
            return torch.from_numpy(flat.reshape(len(ids), 5, -1))

        def score(self, requests):
            return self.core.formulation.score(self.core.model, self.core.builder, requests, self.lookup, self.core.max_rows)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def _rerank_batch(self, requests):
            self.batches += 1
            return await asyncio.get_running_loop().run_in_executor(None, self.score, requests)

        async def rerank(self, turns, candidates):
            return await self._rerank_batch((turns, candidates))

        def info(self):
            return {**self.core.describe(), "pid": os.getpid(), "batches": self.batches, "naive": True}

        def check_vectors(self, ids):
            """Max |naive - table| over the 5 vectors of ``ids``."""
            return float((self.lookup(ids) - self.core.table.lookup(ids)).abs().max())

    return NaiveReranker


async def _load(url: str, bodies: list[dict], concurrency: int, n_requests: int, deadline_s: float, timeout_s: float = 120):
    import aiohttp

    lat, codes, stamps = [], [], []
    start = time.monotonic()
    counter = iter(range(n_requests))

    async def worker(session):
        for i in counter:
            if time.monotonic() - start > deadline_s:
                return
            t = time.monotonic()
            try:
                async with session.post(f"{url}/recommend", json=bodies[i % len(bodies)]) as r:
                    await r.read()
                    codes.append(r.status)
            except Exception:
                codes.append(-1)
            lat.append(time.monotonic() - t)
            stamps.append((time.monotonic() - start, codes[-1]))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.monotonic() - start
    ok = [x for x, c in zip(lat, codes) if c == 200]
    q = sorted(ok)
    return {
        "concurrency": concurrency, "requests": len(codes), "failed": sum(c != 200 for c in codes), "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 3),
        "p50_ms": round(1e3 * statistics.median(q), 1) if q else None,
        "p99_ms": round(1e3 * q[min(len(q) - 1, int(0.99 * len(q)))], 1) if q else None,
        "stamps": stamps,
    }


def load(url, bodies, concurrency, n, deadline):
    return asyncio.run(_load(url, bodies, concurrency, n, deadline))


def replicas(app: str, deployment: str) -> int:
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None or deployment not in st.deployments:
        return 0
    return int(st.deployments[deployment].replica_states.get("RUNNING", 0))


def wait_healthy(url: str, timeout: float = 300) -> None:
    import requests

    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError("the application did not come up")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-config", default=str(REPO / "serve_configs" / "local.yaml"))
    p.add_argument("--workdir", default="lavic_runs/quickstart", help="quickstart work directory with the artifacts")
    p.add_argument("--stage1-adapter", help="the vision adapter the table was made with (default WORKDIR/stage1/adapter)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level (at most)")
    p.add_argument("--deadline", type=float, default=120, help="seconds per concurrency level (at most)")
    p.add_argument("--reranker-threads", type=int, default=2, help="torch threads of the single reranker replica in phase 1")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: compare,autoscale,chaos")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    a = p.parse_args()

    import ray
    from ray import serve

    from lavic_ray.data.layout import read_conversations
    from lavic_ray.serve.app import compose_app, read_serve_config

    w = Path(a.workdir)
    cfgapp = read_serve_config(a.serve_config, {"stage2_dir": str(w / "stage2" / "lavic"), "table": str(w / "items" / "distilled.parquet"),
                                                "catalog": str(w / "catalog")})
    args = cfgapp.args
    args.check_paths()
    stage1 = a.stage1_adapter or str(w / "stage1" / "adapter")
    convs = [c for c in read_conversations(Path(args.catalog) / "synthetic" / "test.jsonl")]
    random.Random(0).shuffle(convs)
    bodies = [{"context": c.context, "k": 3, "candidates": list(c.candidate_list("candidates_st"))} for c in convs]
    url = f"http://127.0.0.1:{a.port}"
    skip = set(filter(None, a.skip.split(",")))
    levels = [int(x) for x in a.concurrency.split(",")]
    from lavic_ray.model.precision import cpu_summary

    result = {"date": str(date.today()), "machine": f"{cpu_summary()}, {platform.system()}",
              "command": " ".join(sys.argv), "stage2_dir": args.stage2_dir, "phases": {}}

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    one = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}
    rargs = args.model_copy(update={"torch_threads": a.reranker_threads})
    small = {k: v for k, v in cfgapp.options.items() if k != "Reranker"}

    if "compare" not in skip:
        naive_cls = make_naive_reranker(stage1, args.catalog)
        compare = {}
        for name, dep in (("lavic", None), ("naive", naive_cls)):
            serve.run(compose_app(rargs, {**small, "Reranker": one}, reranker=dep), name="bench", route_prefix="/")
            wait_healthy(url)
            if name == "naive":
                h = serve.get_deployment_handle("Reranker", app_name="bench")
                diff = h.check_vectors.remote(bodies[0]["candidates"]).result()
                compare["naive_vs_table_max_abs_diff"] = diff
                print(f"naive vectors vs table: max |diff| = {diff:.2e}", flush=True)
            load(url, bodies, 2, 4, 60)  # warm-up
            rows = []
            for c in levels:
                r = load(url, bodies, c, max(a.requests, c), a.deadline)
                r.pop("stamps")
                rows.append(r)
                print(name, r, flush=True)
            compare[name] = rows
            serve.delete("bench")
        compare["ratio_throughput"] = {str(x["concurrency"]): round(x["throughput_rps"] / max(y["throughput_rps"], 1e-9), 2)
                                       for x, y in zip(compare["lavic"], compare["naive"])}
        compare["ratio_p50"] = {str(x["concurrency"]): round(y["p50_ms"] / x["p50_ms"], 2)
                                for x, y in zip(compare["lavic"], compare["naive"]) if x["p50_ms"] and y["p50_ms"]}
        result["phases"]["compare"] = compare
        print("ratios (lavic / naive throughput):", compare["ratio_throughput"], flush=True)

    if "autoscale" not in skip or "chaos" not in skip:
        serve.run(compose_app(args, cfgapp.options), name="bench", route_prefix="/")
        wait_healthy(url)
        load(url, bodies, 2, 4, 60)

    if "autoscale" not in skip:
        import threading

        timeline, stop = [], threading.Event()

        def poll():
            t0 = time.monotonic()
            while not stop.is_set():
                timeline.append((round(time.monotonic() - t0, 1), replicas("bench", "Reranker")))
                time.sleep(1)

        th = threading.Thread(target=poll)
        th.start()
        t0 = time.monotonic()
        up = None
        loads = []
        while time.monotonic() - t0 < 150:
            r = load(url, bodies, 16, 32, 60)
            r.pop("stamps")
            loads.append(r)
            if replicas("bench", "Reranker") >= 2:
                up = round(time.monotonic() - t0, 1)
                r = load(url, bodies, 16, 32, 60)  # some load on 2 replicas
                r.pop("stamps")
                loads.append(r)
                break
        idle0 = time.monotonic()
        down = None
        while time.monotonic() - idle0 < 120:
            if replicas("bench", "Reranker") <= 1:
                down = round(time.monotonic() - idle0, 1)
                break
            time.sleep(1)
        stop.set()
        th.join()
        # the loop above looks between load rounds (tens of seconds); the 1-second timeline says when
        up = next((t for t, n in timeline if n >= 2), None) if up is not None else None
        result["phases"]["autoscale"] = {"autoscaling_config": cfgapp.options["Reranker"].get("autoscaling_config"),
                                         "seconds_to_2_replicas_under_load": up, "seconds_idle_to_1_replica": down,
                                         "max_replicas_seen": max(n for _, n in timeline), "loads": loads,
                                         "timeline": timeline}
        print("autoscale:", {k: v for k, v in result["phases"]["autoscale"].items() if k != "timeline"}, flush=True)

    if "chaos" not in skip:
        import threading

        import requests as http

        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", load(url, bodies, 4, 10_000, 40)))
        poison = ['{"context": "a mug \\ud800 please", "k": 2}', '{"turns": [{"role": "user", "text": "\\u0000\\u0000"}]}',
                  '{"context": "<submission></submission><comment> </comment>"}']
        poisoned: list[int] = []

        def poisoner():
            t_end = time.monotonic() + 38
            while time.monotonic() < t_end and len(poisoned) < 80:
                try:
                    r = http.post(f"{url}/recommend", data=poison[len(poisoned) % len(poison)],
                                  headers={"content-type": "application/json"}, timeout=30)
                    poisoned.append(r.status_code)
                except http.RequestException:
                    poisoned.append(-1)
                time.sleep(0.5)

        pth = threading.Thread(target=poisoner)
        th.start()
        pth.start()
        time.sleep(5)
        names = [x["name"] for x in ray.util.list_named_actors(all_namespaces=True) if "Reranker" in x["name"]]
        killed_at = 5.0
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        th.join()
        pth.join()
        r = box["r"]
        fails = [t for t, c in r["stamps"] if c != 200]
        after = [t for t, c in r["stamps"] if t > killed_at and c == 200]
        result["phases"]["chaos"] = {"killed": names[0], "replicas_before": len(names), "requests": r["requests"],
                                     "failed": r["failed"], "failed_at_s": fails,
                                     "first_success_after_kill_s": round(min(after) - killed_at, 2) if after else None,
                                     "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                     "poisoned": {"sent": len(poisoned), "status_counts": {str(c): poisoned.count(c) for c in sorted(set(poisoned))}}}
        print("chaos:", result["phases"]["chaos"], flush=True)

    serve.shutdown()
    ray.shutdown()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
