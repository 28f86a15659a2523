"""Ray Data pipelines on the small model: preprocess (1 vs 2 workers), describe and embed throughput.

    python bench/pipeline_throughput.py                 # ~500 synthetic images; writes bench/results/pipeline_throughput.json
    python bench/pipeline_throughput.py --items 500 --describe 16

A synthetic catalog of ``--items`` items (``lavic synth``; 672 px JPEGs, ~5% with a second image)
and the small model (SmolLM2-135M + the small vision side, as built: throughput does not depend
on training) are made in a temporary directory. Each measurement is the wall time of the whole
``run_*`` call on a local Ray with every core of the machine, Ray Data's start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--describe", type=int, default=16, help="images to describe")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--model", help="a saved small model (default: built here)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline_throughput.json"))
    a = p.parse_args()

    import ray

    from lavic_ray.config import SynthConfig, load_config
    from lavic_ray.data.synthetic import generate
    from lavic_ray.model.checkpoints import build_small_base, save_checkpoint
    from lavic_ray.pipeline.describe import run_describe
    from lavic_ray.pipeline.embed import run_embed
    from lavic_ray.pipeline.preprocess import run_preprocess
    from lavic_ray.retrieval import make_retriever

    tmp = Path(tempfile.mkdtemp(prefix="lavic-pipebench-"))
    t = time.monotonic()
    generate(SynthConfig(items=a.items, conversations=max(60, a.items // 4), seed=5), tmp / "catalog", make_retriever("sbert"),
             force=True)
    print(f"catalog: {time.monotonic() - t:.1f} s", flush=True)
    model = a.model or str(save_checkpoint(build_small_base(), tmp / "small"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    from lavic_ray.model.precision import cpu_summary

    result = {"date": str(date.today()), "machine": cpu_summary(), "command": " ".join(sys.argv),
              "ray": ray.__version__}
    base = ["preprocess.cpus_per_worker=1", f"preprocess.shard_size={a.shard_size}"]
    for workers in (1, 2):
        cfg = load_config(str(REPO / "jobs" / "configs" / "small.yaml"), [f"model.checkpoint={model}", f"preprocess.workers={workers}", *base])
        t = time.monotonic()
        m = run_preprocess(cfg, tmp / "catalog", tmp / f"pre{workers}")
        wall = time.monotonic() - t
        row = {"images": m["images"], "bad": m["bad"], "wall_s": round(wall, 2), "images_per_s": round(m["images"] / wall, 2),
               "in_shards_s": m["seconds_this_run"], "shard_work_s": m["shard_seconds_this_run"],
               "views": m["views_histogram"]}
        result[f"preprocess_{workers}_workers"] = row
        print(f"preprocess, {workers} worker(s): {row}", flush=True)
    result["preprocess_scaling"] = round(result["preprocess_2_workers"]["images_per_s"] / result["preprocess_1_workers"]["images_per_s"], 2)
    cfg = load_config(str(REPO / "jobs" / "configs" / "small.yaml"),
                      [f"model.checkpoint={model}", "describe.overwrite=true", f"describe.limit={a.describe}", "describe.actors=1",
                       f"describe.cpus_per_actor={os.cpu_count()}"])
    t = time.monotonic()
    d = run_describe(cfg, tmp / "catalog", tmp / "desc")
    wall = time.monotonic() - t
    result["describe"] = {"images": d["described_this_run"], "generated_tokens": d["generated_tokens"], "wall_s": round(wall, 2),
                          "images_per_s": round(d["described_this_run"] / wall, 3),
                          "tokens_per_s": round(d["generated_tokens"] / wall, 1), "loop_images_per_s": d["images_per_s"],
                          "loop_tokens_per_s": d["tokens_per_s"], "batch_size": cfg.describe.batch_size,
                          "max_new_tokens": cfg.describe.max_new_tokens}
    print(f"describe: {result['describe']}", flush=True)
    t = time.monotonic()
    ecfg = load_config(str(REPO / "jobs" / "configs" / "small.yaml"),
                       [f"model.checkpoint={model}", f"dataset.root={tmp / 'catalog'}", "embed.actors=1",
                        f"embed.cpus_per_actor={os.cpu_count()}"])
    out = run_embed(ecfg, tmp / "items.parquet")
    wall = time.monotonic() - t
    import pyarrow.parquet as pq

    n = pq.read_metadata(out).num_rows
    result["embed"] = {"items": n, "wall_s": round(wall, 2), "items_per_s": round(n / wall, 2)}
    print(f"embed: {result['embed']}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"preprocess scaling 1 -> 2 workers: {result['preprocess_scaling']}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
