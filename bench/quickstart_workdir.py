"""What the CPU benchmarks that reuse a quickstart work directory share: its check, and the stage-2 run they time.

``bench/prefix_sharing.py`` times the quickstart preset's stage 2 on a
finished quickstart (its catalog, small model and distilled item table) as ``lavic recommend --no-ray``
processes with validation off, and read each run's samples/s from its ``--json`` summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "lavic_ray" / "presets" / "quickstart_small.yaml"


def check_workdir(workdir: str) -> Path:
    """The work directory, resolved; exits with what to run when the quickstart has not made it."""
    root = Path(workdir).resolve()
    for need in ("catalog", "models/small/config.json", "items/distilled.parquet"):
        if not (root / need).exists():
            raise SystemExit(f"{root / need} is missing: run `lavic quickstart --workdir {workdir}` first")
    return root


def stage2_command(workdir: Path, out: Path, steps: int, *sets: str) -> list[str]:
    """``lavic recommend --no-ray`` for ``steps`` steps of the preset's stage 2 (validation off), plus ``--set``s.

    Run it with ``cwd=REPO``: ``python -m`` then imports this checkout's ``lavic_ray``.
    """
    cmd = [sys.executable, "-m", "lavic_ray.cli", "recommend", "--no-ray", "--json", "--catalog", str(workdir / "catalog"),
           "--out", str(out), "--table", str(workdir / "items" / "distilled.parquet"), "--config", str(PRESET),
           "--checkpoint", str(workdir / "models" / "small"), "--set", f"stage2.max_steps={steps}",
           "--set", f"stage2.eval_every={10 * steps}", "--set", "stage2.eval_limit=1", "--set", "stage2.log_every=5"]
    return cmd + [x for s in sets for x in ("--set", s)]


def samples_per_s(stdout: str) -> float:
    """A run's samples/s, from the JSON summary it prints last."""
    return float(json.loads(stdout.strip().splitlines()[-1])["samples_per_s"])
