"""The reranker with its stage-2 LoRA merged into the weights at replica start vs kept as a PEFT adapter.

``ServeArgs.merge_lora`` (default on) merges the adapter once when a replica starts
(``merge_and_unload``); requests then run the plain model, without the two extra low-rank
matmuls per adapted projection. Measured in one process, on a finished quickstart's trained
``stage2/lavic`` run: both ``Recommender``s are loaded side by side, and their calls alternate
(so drift of the machine's speed hits both alike); the median latency of scoring one 10-candidate
validation request, and of 8 per call, under the run's own precision; the largest score
difference between the two, and whether their top-1 agree.

    python bench/reranker_merge.py --workdir lavic_runs/quickstart [--repeats 9] [--out bench/results/reranker_merge.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quickstart_workdir import REPO, check_workdir  # noqa: E402


def main() -> int:
    import torch

    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.model.recommender import Recommender

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a finished quickstart work directory")
    p.add_argument("--run", default="stage2/lavic", help="the stage-2 run under the work directory")
    p.add_argument("--repeats", type=int, default=9, help="timed calls per variant and batch size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "reranker_merge.json"))
    a = p.parse_args()
    workdir = check_workdir(a.workdir)
    if a.threads:
        torch.set_num_threads(a.threads)
    run = workdir / a.run
    t0 = time.perf_counter()
    plain = Recommender(run, workdir / "items" / "distilled.parquet")
    t1 = time.perf_counter()
    merged = Recommender(run, workdir / "items" / "distilled.parquet", merge_lora=True)
    t2 = time.perf_counter()
    catalog = Catalog.load(workdir / "catalog")
    key = plain.cfg.stage2.candidates_key
    convs = read_conversations(workdir / "catalog" / plain.cfg.dataset.domain / "valid.jsonl", (key,))[:8]
    requests = [(c.turns(), [(i, catalog[i].title) for i in c.candidate_list(key)]) for c in convs]
    latency: dict = {}
    for n in (1, 8):
        batch = requests[:n]
        times: dict = {"adapter": [], "merged": []}
        for rec in (plain, merged):
            rec.score(batch)  # warm-up
        for _ in range(a.repeats):
            for name, rec in (("adapter", plain), ("merged", merged)):
                s = time.perf_counter()
                rec.score(batch)
                times[name].append(time.perf_counter() - s)
        latency[f"requests_{n}"] = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
        latency[f"requests_{n}"]["merged_vs_adapter"] = round(latency[f"requests_{n}"]["merged"] / latency[f"requests_{n}"]["adapter"], 3)
        print(f"{n} request(s) per call: adapter {latency[f'requests_{n}']['adapter']} ms, merged "
              f"{latency[f'requests_{n}']['merged']} ms ({latency[f'requests_{n}']['merged_vs_adapter']}x)", flush=True)
    sa, sm = torch.tensor(plain.score(requests)), torch.tensor(merged.score(requests))
    from lavic_ray.model.precision import cpu_summary

    res = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_summary(),
           "threads": torch.get_num_threads(), "run": str(a.run), "precision": "bf16 autocast" if plain.autocast else plain.cfg.model.dtype,
           "candidates_per_request": [len(c) for _, c in requests], "repeats": a.repeats, "latency_ms": latency,
           "load_s": {"adapter": round(t1 - t0, 2), "merged": round(t2 - t1, 2)},
           "max_score_difference": float(f"{float((sa - sm).abs().max()):.2g}"),
           "same_top1": float((sa.argmax(1) == sm.argmax(1)).float().mean())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
