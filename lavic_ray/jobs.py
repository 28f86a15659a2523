"""What ``jobs/<job>.py`` runs under ``ray job submit``: a preset, dotted overrides, one workflow step.

    ray job submit --working-dir . -- python jobs/distill.py --config jobs/configs/distill_small.yaml --set stage1.epochs=3

The same command works against a local ``ray start --head`` and, unchanged, against a
remote cluster (``RAY_ADDRESS`` / ``--address``): the job's driver connects to the
cluster it was submitted to, and Ray Train / Ray Data place the work on its nodes.
Run without ``ray job submit`` (``python jobs/distill.py ...``) it starts a local Ray.

Every job reads and writes under ``storage_root`` (see :mod:`lavic_ray.workflow`), so
the jobs chain: preprocess -> describe -> distill -> embed -> recommend -> evaluate, or pipeline
(the quickstart chain: synthetic catalog with descriptions, distill ... evaluate).
On a multi-node cluster, ``storage_root`` must be storage every node sees (NFS, a
shared volume), as Ray Train's checkpoints are written there.

Overrides are ``--set section.key=value`` (as with ``lavic``) or bare ``section.key=value``.
A mistake the user can fix exits 2 with one line; the last line printed is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lavic_ray import storage, workflow
from lavic_ray.config import LavicConfig, load_config


def preprocess(cfg: LavicConfig) -> dict:
    """Decode, validate and tile every image into Parquet shards (Ray Data); bad images listed with their reason."""
    cfg, art = workflow.resolve(cfg)
    return workflow.preprocess(cfg, art)


def describe(cfg: LavicConfig) -> dict:
    """Teacher descriptions from the full-token VLM (Ray Data actor pool); stage 1 reads them with dataset.descriptions."""
    cfg, art = workflow.resolve(cfg)
    return workflow.describe(cfg, art)


def distill(cfg: LavicConfig) -> dict:
    """Stage 1: visual knowledge self-distillation on Ray Train (LoRA on the vision tower + projector)."""
    cfg, art = workflow.resolve(cfg)
    d = workflow.stage1(cfg, art)
    return {"stage1": str(d), "adapter": str(d / "adapter")}


def embed(cfg: LavicConfig) -> dict:
    """The item embedding table job.variant reads (Ray Data actor pool): distilled, or undistilled for lavic-no-distill."""
    from lavic_ray.errors import InvalidInput
    from lavic_ray.variants import VARIANTS

    cfg, art = workflow.resolve(cfg)
    which = VARIANTS[cfg.job.variant].table
    if which is None:
        raise InvalidInput(f"job.variant={cfg.job.variant} reads no item embedding table: nothing to embed")
    return {"table": str(workflow.embed(cfg, art, which))}


def recommend(cfg: LavicConfig) -> dict:
    """Stage 2: recommendation fine-tuning on Ray Train (LoRA on the LLM) of job.variant."""
    cfg, art = workflow.resolve(cfg)
    return workflow.stage2(cfg, art, cfg.job.variant).model_dump()


def evaluate(cfg: LavicConfig) -> dict:
    """Every method in eval.methods on job.split: metrics, predictions, config under eval/."""
    from lavic_ray.errors import InputMissing
    from lavic_ray.eval.lavic_methods import LAVIC_METHODS

    cfg, art = workflow.resolve(cfg)
    runs = workflow.trained_runs(art)
    missing = [m for m in cfg.eval.methods if m in LAVIC_METHODS and m not in runs and m not in cfg.eval.runs]
    if missing:
        raise InputMissing(f"eval.methods names {missing}, but no such stage-2 run is trained under {art.root} "
                           "(run jobs/recommend.py with job.variant=<method>)")
    return workflow.evaluate_methods(cfg, art, cfg.eval.methods, runs, cfg.job.split)


def pipeline(cfg: LavicConfig) -> dict:
    """Every step in order (the quickstart chain on any preset), with a report."""
    from lavic_ray import console
    from lavic_ray.quickstart import run_quickstart

    return run_quickstart(cfg, console=console.get())


def index(cfg: LavicConfig) -> dict:
    """The retrieval index over the catalog that the Serve configs load (retrieval/sbert under storage_root)."""
    cfg, art = workflow.resolve(cfg)
    return workflow.index(cfg, art)


def download(cfg: LavicConfig) -> dict:
    """A hub checkpoint (download.repo_id at download.revision) into the folder model.checkpoint names, once."""
    from lavic_ray.download import download as run

    return run(cfg)


def tune(cfg: LavicConfig) -> dict:
    """A Ray Tune search over stage 1 or stage 2 (tune.*), each trial a Ray Train run; writes the best preset."""
    from lavic_ray.tune import run_tune

    cfg, art = workflow.resolve(cfg)
    return run_tune(cfg, art)


JOBS: dict[str, Callable[[LavicConfig], dict]] = {
    "download": download, "preprocess": preprocess, "describe": describe, "distill": distill, "embed": embed,
    "recommend": recommend, "evaluate": evaluate, "index": index, "pipeline": pipeline, "tune": tune,
}


def parser(job: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jobs/{job}.py", description=(JOBS[job].__doc__ or __doc__).strip().splitlines()[0])
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                   help="preset(s), merged in order (jobs/configs/*.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override (repeatable), as with lavic --set")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides, applied last")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, set by `ray job submit`; else a local Ray)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every log line (Ray's and DeepSpeed's too)")
    return p


def main(job: str, argv: list[str] | None = None) -> int:
    """Run job ``job``; the last line printed is its result as JSON. Exit 2 on a bad config or input."""
    from lavic_ray import console, preflight
    from lavic_ray.errors import UserError
    from lavic_ray.hardware import mark_driver
    from lavic_ray.runtime import ensure_ray, ray_released

    args = parser(job).parse_args(argv)
    try:
        cfg = load_config(args.config or None, [*args.sets, *args.overrides])
        # missing or unusable inputs fail here, on the driver, before any worker is asked of the cluster
        preflight.check(cfg, job)
        if job not in ("pipeline", "download"):
            workflow.resolve(cfg)
        mark_driver()
        log_file = storage.local(cfg.storage_root) / "logs" / f"job-{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with console.session(log_file, verbose=args.verbose) as con, ray_released():
            with con.step(f"jobs/{job}.py: {(JOBS[job].__doc__ or '').strip().splitlines()[0]}"):
                ensure_ray(args.address)
                result = JOBS[job](cfg)
            print(json.dumps(result, default=str), file=con.out, flush=True)
        storage.publish(log_file)  # under an object store: the log beside the runs
    except preflight.PreflightFailed as e:
        for line in e.problems:
            print(f"jobs/{job}.py: error: {line}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"jobs/{job}.py: error: {e}", file=sys.stderr)
        return 2
    return 0
