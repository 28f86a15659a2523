"""The quickstart under several seeds: does the embedded default learn every time, and which step decides?

    python bench/quickstart_seeds.py --seeds 0 1 2 --root /tmp/qs_seeds                      # the whole chain per seed
    python bench/quickstart_seeds.py --seeds 1 2 3 --root /tmp/qs_s2 --vary stage2 --base /tmp/qs_seeds/seed0
    python bench/quickstart_seeds.py --seeds 0 1 2 --root /tmp/qs_b --set synth.scheme=gadgets  # another catalog setting
    python bench/quickstart_seeds.py --seeds 0 --root /tmp/qs_a --isa avx2    # fp32 with AVX2 kernels, on a newer CPU

``--vary all`` runs ``lavic quickstart --set seed=S`` from scratch per seed (every step seeded by S). ``--vary
model|stage1|stage2`` holds every step before that one fixed - it copies them from ``--base``, a finished
quickstart work directory - and reruns that step and the ones after it with only that step's seed changed
(``small_model.seed``, ``stage1.seed`` or ``stage2.seed``): the variance that step alone brings.

Per seed it records the wall time, the stage-1 probe before (the small model as its build left it: the build's
probe) and after, each stage-2 variant's validation curve and verdict, and every method's test HR@1. Results go
to ``--out`` (JSON) and a markdown table is printed.
Each run is a subprocess with its own local Ray, like a user's.

``--isa avx2`` runs each subprocess (and the Ray workers it starts, which inherit its environment) with PyTorch,
oneDNN and MKL held to AVX2 (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``): on a
CPU with AVX-512 BF16 it then reports ``AVX2, bf16 emulated``, so ``engine.precision: auto`` trains in fp32 with
the kernels an AVX2-only CPU uses - the quickstart's fp32 path as such a CPU takes it, on whatever machine is at
hand. It samples that path; it does not replay another CPU's run (measured: the same seed's build already
differed from the AVX2-only machine's; docs/history.md, "The quickstart held to AVX2").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from lavic_ray.model.precision import cpu_summary

REPO = Path(__file__).resolve().parents[1]
#: per varied step: the artifacts (under a work directory) that step and the ones after it write
DOWNSTREAM = {
    "model": ["models", "probe.json", "stage1", "items", "stage2", "eval", "report"],
    "stage1": ["stage1", "items", "stage2", "eval", "report"],
    "stage2": ["stage2", "eval", "report"],
}
#: the environment that holds PyTorch (ATen), oneDNN and MKL to one instruction set (``--isa``)
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
SEED_KEY = {"all": "seed", "model": "small_model.seed", "stage1": "stage1.seed", "stage2": "stage2.seed"}


def prepare(workdir: Path, base: Path | None, vary: str) -> None:
    """A work directory holding the base run's artifacts before the varied step (none for ``all``)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    if vary == "all":
        return
    shutil.copytree(base, workdir, ignore=shutil.ignore_patterns("logs", "ray"))
    for name in DOWNSTREAM[vary]:
        p = workdir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.is_file():
            p.unlink()
    if vary == "stage1":  # the probe before stage 1 stays valid: only "after" is stage 1's
        probe = base / "probe.json"
        if probe.is_file():
            (workdir / "probe.json").write_text(json.dumps({"before": json.loads(probe.read_text())["before"]}))


def summarise(workdir: Path, results: dict, seconds: float) -> dict:
    out = {"workdir": str(workdir), "minutes": round(seconds / 60, 1),
           "test_hr@1": {m: round(r["hr@1"], 4) for m, r in results.items()}}
    for name, r in results.items():
        if "learned" in r:
            out.setdefault("stage2", {})[name] = {"learned": r["learned"], "valid_curve": r["valid_curve"],
                                                  "steps": max((s for s, _ in r["valid_curve"]), default=0)}
    probe = workdir / "probe.json"
    if probe.is_file():
        p = json.loads(probe.read_text())
        out["probe"] = {k: {a: round(v[a], 3) for a in v if a.endswith("_accuracy")} for k, v in p.items()}
    report = workdir / "report" / "results.json"
    if report.is_file():
        out["timings"] = json.loads(report.read_text()).get("timings")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", required=True, help="one work directory per seed goes under it")
    p.add_argument("--vary", choices=list(SEED_KEY), default="all")
    p.add_argument("--base", help="--vary model|stage1|stage2: a finished quickstart work directory to hold fixed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="quickstart override")
    p.add_argument("--out", default="bench/results/quickstart_seeds.json")
    p.add_argument("--isa", choices=["native", *ISA_ENV], default="native",
                   help="avx2: the kernels an AVX2-only CPU uses (PyTorch, oneDNN and MKL held to AVX2; fp32 under auto)")
    a = p.parse_args()
    env = {**os.environ, **ISA_ENV.get(a.isa, {})}
    machine = cpu_summary() if a.isa == "native" else subprocess.run(
        [sys.executable, "-c", "from lavic_ray.model.precision import cpu_summary; print(cpu_summary())"],
        env=env, capture_output=True, text=True, check=True).stdout.strip() + f" (held to it on: {cpu_summary()})"
    if a.vary != "all" and not (a.base and Path(a.base, "report").is_dir()):
        p.error("--vary model|stage1|stage2 needs --base: a finished quickstart work directory")
    lavic = Path(sys.executable).parent / "lavic"
    rows = []
    for seed in a.seeds:
        workdir = Path(a.root) / f"seed{seed}"
        prepare(workdir, Path(a.base) if a.base else None, a.vary)
        cmd = [str(lavic), "quickstart", "--workdir", str(workdir), "--json", "--set", f"{SEED_KEY[a.vary]}={seed}"]
        for ov in a.overrides:
            cmd += ["--set", ov]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            print(f"seed {seed}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            rows.append({"seed": seed, "failed": proc.returncode, "stderr": proc.stderr[-3000:]})
            continue
        row = {"seed": seed, **summarise(workdir, json.loads(proc.stdout.strip().splitlines()[-1]), seconds)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"date": str(date.today()), "machine": machine,
                                           "command": " ".join(sys.argv), "vary": a.vary, "runs": rows}, indent=1))
    ok = [r for r in rows if "test_hr@1" in r]
    print("\n| seed | minutes | lavic | title-only | gap | stage-2 steps (lavic) | learned | probe after (decisive attributes) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ok:
        t = r["test_hr@1"]
        gap = t["lavic"] - t.get("lavic-title-only", float("nan"))
        s2 = r.get("stage2", {}).get("lavic", {})
        pr = r.get("probe", {}).get("after", {})
        print(f"| {r['seed']} | {r['minutes']} | {t['lavic']:.3f} | {t.get('lavic-title-only', float('nan')):.3f} | {gap:+.3f} "
              f"| {s2.get('steps')} | {s2.get('learned')} | {' / '.join(f'{k[:-9]} {v}' for k, v in pr.items())} |")
    if ok:
        hr = [r["test_hr@1"]["lavic"] for r in ok]
        print(f"\nlavic test HR@1: mean {statistics.mean(hr):.3f}, min {min(hr):.3f}, max {max(hr):.3f}; "
              f"median minutes {statistics.median(r['minutes'] for r in ok)}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
