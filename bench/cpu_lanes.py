"""Stage-2 training on a few CPU cores: one run with every thread, or several single-threaded runs side by side.

The quickstart trains three independent stage-2 variants (LaViC, title-only, no-distill). On
the 2-core default machine a two-threaded run spends part of each step in thread
synchronisation over the small model's small matrices, so single-threaded runs side by side
may do more work per second in all. This runs the same stage 2 (the quickstart's preset, its
small model and distilled table, ``--steps`` optimizer steps, validation off) as separate
``lavic recommend --no-ray`` processes, in one go:

    (a) 1 process,  threads = all cores        (one variant at a time)
    (b) N processes, 1 thread each, at once     (N = cores: one lane per core)
    (c) 3 processes, 1 thread each, at once     (the quickstart's three variants on 2 cores)

and reports each set's aggregate samples/s (each process's own figure, timed from its first
step, summed) and its ratio to (a).

    python bench/cpu_lanes.py --workdir lavic_runs/quickstart [--steps 20] [--out bench/results/cpu_lanes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quickstart_workdir import PRESET, REPO, check_workdir, samples_per_s, stage2_command  # noqa: E402


def run_set(workdir: Path, procs: int, threads: int, steps: int, scratch: Path) -> dict:
    """Start ``procs`` stage-2 runs at once with ``threads`` torch threads each; wait; sum their samples/s."""
    running = []
    for i in range(procs):
        out = scratch / f"p{procs}x{threads}_{i}"
        cmd = stage2_command(workdir, out, steps)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        running.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    t0 = time.monotonic()
    rates = []
    for p in running:
        stdout, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"a stage-2 run failed (exit {p.returncode}): {stdout[-2000:]}")
        rates.append(samples_per_s(stdout))
    return {"processes": procs, "threads_each": threads, "samples_per_s_each": [round(r, 3) for r in rates],
            "samples_per_s_total": round(sum(rates), 3), "wall_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a quickstart work directory (its catalog, small model and distilled table)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_lanes.json"))
    a = p.parse_args()
    workdir = check_workdir(a.workdir)
    cores = os.cpu_count() or 1
    sets = [(1, cores), (cores, 1)] + ([(3, 1)] if cores != 3 else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="lavic-lanes-") as scratch:
        for procs, threads in sets:
            r = run_set(workdir, procs, threads, a.steps, Path(scratch))
            results.append(r)
            print(f"{procs} process(es) x {threads} thread(s): {r['samples_per_s_total']:.2f} samples/s in all "
                  f"({r['samples_per_s_each']}), {r['wall_s']} s", flush=True)
    base = results[0]["samples_per_s_total"]
    for r in results:
        r["ratio_vs_one_run"] = round(r["samples_per_s_total"] / base, 3)
    from lavic_ray.model.precision import cpu_summary

    out = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_summary(),
           "steps": a.steps, "preset": str(PRESET.relative_to(REPO)), "sets": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for r in results[1:]:
        print(f"{r['processes']} x 1 thread vs 1 x {cores} threads: {r['ratio_vs_one_run']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
