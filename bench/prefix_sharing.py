"""Pointwise stage 2 and reranking: how a conversation prefix is shared by its candidates.

The quickstart's stage 2 is pointwise: a conversation, then each candidate's suffix (5 vectors,
title, question) -> " yes"/" no". ``stage2.prefix_sharing`` picks how the prefix is shared
(lavic_ray/model/scoring.py); all three compute the same numbers (tests/model/test_lavic.py):

* ``packed``: one row per conversation, every candidate suffix after the prefix, a block
  attention mask; one forward pass;
* ``cache``:  the prefix runs once, its KV cache is copied per candidate row, the suffixes
  continue from the copies (the previous default);
* ``none``:   one (conversation + candidate) sequence per candidate.

Measured in one run, on a quickstart work directory (its catalog, small model and distilled table):

1. training: ``lavic recommend --no-ray`` (the quickstart's preset, ``--steps`` optimizer steps,
   validation off) once per mode, one after the other, each on every core; samples/s from the
   run's own summary (timed from its first step);
2. reranking: the trained adapter of (1) loaded with ``Recommender``; the median latency of
   scoring one 10-candidate validation request, and of 8 requests per call, per mode (under the
   run's bf16 autocast, as served); and the largest score difference between the modes, under
   bf16 and in fp32.

    python bench/prefix_sharing.py --workdir lavic_runs/quickstart [--steps 15] [--out bench/results/prefix_sharing.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quickstart_workdir import PRESET, REPO, check_workdir, samples_per_s, stage2_command  # noqa: E402

MODES = ("packed", "cache", "none")


def train(workdir: Path, mode: str, steps: int, out: Path) -> float:
    p = subprocess.run(stage2_command(workdir, out, steps, f"stage2.prefix_sharing={mode}"), cwd=REPO,
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"stage 2 ({mode}) failed (exit {p.returncode}): {p.stderr[-3000:]}")
    return samples_per_s(p.stdout)


def rerank(stage2_dir: Path, workdir: Path, repeats: int) -> dict:
    import torch

    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.model.recommender import Recommender

    rec = Recommender(stage2_dir, workdir / "items" / "distilled.parquet")
    catalog = Catalog.load(workdir / "catalog")
    key = rec.cfg.stage2.candidates_key
    convs = read_conversations(workdir / "catalog" / rec.cfg.dataset.domain / "valid.jsonl", (key,))[:8]
    requests = [(c.turns(), [(i, catalog[i].title) for i in c.candidate_list(key)]) for c in convs]
    out, scores = {}, {}
    for mode in MODES:
        rec.sharing = mode
        row = {}
        for n in (1, 8):
            batch = requests[:n]
            rec.score(batch)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s = rec.score(batch)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            row[f"requests_{n}"] = {"median_ms": round(1000 * med, 1), "requests_per_s": round(n / med, 3)}
            if n == 8:
                scores[mode] = torch.tensor(s)
        out[mode] = row
        print(f"rerank {mode}: 1 request {row['requests_1']['median_ms']} ms, 8 per call "
              f"{row['requests_8']['requests_per_s']} requests/s", flush=True)
    out["max_score_difference_vs_packed_bf16"] = {m: round(float((scores[m] - scores["packed"]).abs().max()), 5) for m in MODES[1:]}
    # the modes compute the same function: compare them in fp32, where rounding does not blur it
    autocast, rec.autocast, fp32 = rec.autocast, False, {}
    for mode in MODES:
        rec.sharing = mode
        fp32[mode] = torch.tensor(rec.score(requests))
    rec.autocast = autocast
    out["max_score_difference_vs_packed_fp32"] = {m: float(f"{float((fp32[m] - fp32['packed']).abs().max()):.2g}") for m in MODES[1:]}
    out["same_top1_as_packed_fp32"] = {m: float((fp32[m].argmax(1) == fp32["packed"].argmax(1)).float().mean()) for m in MODES[1:]}
    out["candidates_per_request"] = [len(c) for _, c in requests]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a quickstart work directory (catalog, small model, distilled table)")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=5, help="timed reranker calls per mode and batch size")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "prefix_sharing.json"))
    a = p.parse_args()
    workdir = check_workdir(a.workdir)
    training = {}
    with tempfile.TemporaryDirectory(prefix="lavic-sharing-") as scratch:
        for mode in MODES:
            training[mode] = round(train(workdir, mode, a.steps, Path(scratch) / mode), 3)
            print(f"stage 2 {mode}: {training[mode]:.3f} samples/s", flush=True)
        reranking = rerank(Path(scratch) / "packed", workdir, a.repeats)
    from lavic_ray.model.precision import cpu_summary

    res = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_summary(),
           "steps": a.steps, "preset": str(PRESET.relative_to(REPO)), "train_samples_per_s": training,
           "train_ratio_packed_vs": {m: round(training["packed"] / training[m], 3) for m in MODES[1:]}, "rerank": reranking}
    r1 = {m: reranking[m]["requests_1"]["median_ms"] for m in MODES}
    res["rerank_latency_ratio_vs_packed"] = {m: round(r1[m] / r1["packed"], 3) for m in MODES[1:]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"stage 2 packed vs cache: {res['train_ratio_packed_vs']['cache']:.2f}x samples/s; "
          f"rerank latency cache/packed {res['rerank_latency_ratio_vs_packed']['cache']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
