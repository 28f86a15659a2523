"""`lavic quickstart`: the main job on the embedded default, end to end, on a local Ray.

synthetic catalog -> small model (vision side trained on the catalog) -> stage 1
(Ray Train + DeepSpeed) -> item embedding tables (Ray Data; distilled and
undistilled) -> stage 2 x3 (LaViC, title-only, no-distill) -> evaluation of every
method on the synthetic test split -> markdown report with training curves.

Every step writes its artifacts under the work directory beside its config and
is skipped on a rerun when its output is already there, so an interrupted
quickstart picks up where it stopped (Ray Train also resumes a half-done stage).
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path

from lavic_ray import diagnosis, report, storage, workflow
from lavic_ray.artifacts import Artifacts, write_config
from lavic_ray.config import LavicConfig, load_config
from lavic_ray.console import Console
from lavic_ray.data.validate import validate_root
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.evaluate import format_table
from lavic_ray.eval.methods import BASELINES
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)

PRESET = "quickstart_small.yaml"
#: The baselines every quickstart report compares against.
REFERENCE_METHODS = ("sbert", "bm25", "random", "first-candidate")
assert set(REFERENCE_METHODS) <= set(BASELINES)


def methods_of(cfg: LavicConfig) -> list[str]:
    """What the quickstart evaluates: the trained variants (``job.variants``), any other LaViC method
    ``eval.methods`` names (``lavic-generate``), and the baselines."""
    from lavic_ray.eval.lavic_methods import LAVIC_METHODS

    extra = [m for m in cfg.eval.methods if m in LAVIC_METHODS and m not in VARIANTS]
    return list(dict.fromkeys([*cfg.job.variants, *extra, *REFERENCE_METHODS]))


def quickstart_config(path: str | Path | list | None = None, overrides: list[str] | None = None) -> LavicConfig:
    """The packaged preset, then optional user file(s), then dotted overrides."""
    preset = Path(str(resources.files("lavic_ray.presets").joinpath(PRESET)))
    paths = [] if path is None else ([path] if isinstance(path, (str, Path)) else list(path))
    return load_config([preset, *paths], overrides)


def run_quickstart(cfg: LavicConfig, console: Console | None = None) -> dict[str, dict]:
    """Run every step under ``cfg.storage_root``; return ``{method: metrics}`` on the test split.

    The dataset is ``dataset.root`` when set (the pipeline job on a user's data), else
    the synthetic catalog, made under the storage root. ``console`` shows each step (a
    silent one by default).
    """
    from lavic_ray.runtime import ensure_ray

    console = console or Console(enabled=False)
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.monotonic()
        out = fn(*a, **k)
        timings[name] = round(time.monotonic() - t, 1)
        log.info("quickstart: %s took %.0f s", name, timings[name])
        return out

    art = Artifacts(cfg.storage_root)
    # steps a rerun takes from an earlier one: the wall time then says nothing about a run from scratch
    reused = (["stage 1"] if workflow.stage_done(art.stage1) else []) + [
        f"stage 2 ({v})" for v in cfg.job.variants if workflow.stage_done(art.stage2(v))]
    steps = ["dataset", "model", "stage 1 (with the probe before and after)", "item embedding tables",
             "stage 2: " + ", ".join(cfg.job.variants), "evaluation of every method on the test split", "report"]
    n = len(steps)
    with console.step(steps[0] + (f" {cfg.dataset.root}" if cfg.dataset.root else " (the synthetic catalog)"), 1, n):
        root = timed("synthetic catalog", workflow.dataset_root, cfg, art, create=True)
        checked = validate_root(root)
        if not checked.ok:
            raise InvalidInput(f"the dataset {root} failed validation:\n" + checked.render(20))
    # its own local Ray unless this runs inside a job: never join a cluster someone else started on this machine
    ensure_ray("local")
    with console.step(f"{steps[1]} {cfg.model.checkpoint}", 2, n):
        cfg, art = timed("model", workflow.resolve, cfg, build=True)  # a Ray task: the driver loads no model
    write_config(art.root, cfg)

    with console.step(steps[2], 3, n):
        probe = diagnosis.run_probe(cfg, art, timed)
    with console.step(steps[3], 4, n):
        for which in dict.fromkeys(VARIANTS[v].table for v in cfg.job.variants if VARIANTS[v].table):
            if not storage.exists(art.table(which)):
                timed(f"embed ({which})", workflow.embed, cfg, art, which)
    with console.step(steps[4], 5, n):
        runs = timed("stage 2 (every variant)", workflow.stage2_variants, cfg, art, tuple(cfg.job.variants), timed)
    with console.step(steps[5], 6, n):
        results = workflow.evaluate_methods(cfg, art, methods_of(cfg), runs, "test", timed)
    with console.step(steps[6], 7, n):
        histories = {"stage1": json.loads(storage.fetch(art.stage1 / "history.json").read_text())}
        for name, r in runs.items():
            histories[f"stage2 {name}"] = json.loads(storage.fetch(Path(r.stage2_dir) / "history.json").read_text())
            results[name].update(diagnosis.verdict(histories[f"stage2 {name}"]))
        probe = diagnosis.diagnose(cfg, art, results, probe, timed)
        timings["total"] = round(time.monotonic() - t_start, 1)
        report.write_report(art, cfg, results, probe, timings, workflow.dataset(cfg), histories, reused)
    console.line(format_table(results))
    for line in diagnosis.console_lines(results, runs, probe):
        console.line(line)
    console.line(f"report: {art.report / 'report.md'}")
    return results
