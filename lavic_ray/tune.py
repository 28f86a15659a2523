"""Ray Tune over stage 1 or stage 2: each trial is a whole Ray Train run, ASHA stops the weak early.

The search space lives in the config (``tune.space``): dotted config keys, each with a
distribution, for example::

    tune:
      stage: stage2
      metric: valid_hr@1
      mode: max
      num_samples: 8
      space:
        stage2.lr: {loguniform: [1.0e-4, 3.0e-3]}
        stage2.lora.r: {choice: [8, 16, 32]}
        stage2.lora.dropout: {uniform: [0.0, 0.1]}

Each trial is a function trainable that builds and fits the stage's ``TorchTrainer``
(with the trial's values applied to the config) and forwards every metric its workers
report to Tune (``TuneReportCallback``); ASHA compares trials on ``step`` (optimizer
steps) and stops the bottom ones. Outputs under ``<storage_root>/tune/<stage>/``:
``trials/<trial>/`` (each run: adapter, history, checkpoints), ``results.csv`` and
``results.md`` (one row per trial), and ``best.yaml``: the whole resolved config of the
best trial, ready to pass to any job as ``--config``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from lavic_ray import storage
from lavic_ray.artifacts import Artifacts, atomic_write_text
from lavic_ray.config import ConfigError, LavicConfig, config_to_yaml, set_dotted
from lavic_ray.errors import InputMissing, UserError

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
#: CPUs each trial's driver holds (it only waits on its Ray Train workers)
TRIAL_DRIVER_CPUS = 0.05


def apply(cfg: LavicConfig, values: dict) -> LavicConfig:
    """``cfg`` with dotted keys set to values (validated: an unknown key or a bad value raises ConfigError)."""
    from pydantic import ValidationError

    data = cfg.model_dump()
    for key, value in values.items():
        set_dotted(data, key, value)
    try:
        return LavicConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"tune.space {sorted(values)}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None


def search_space(cfg: LavicConfig) -> dict:
    """``tune.space`` as Ray Tune distributions; every key is checked against the config first."""
    from ray import tune

    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: give at least one dotted key with a distribution")
    space = {}
    for key, spec in cfg.tune.space.items():
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"tune.space.{key}: give exactly one of {DISTRIBUTIONS}, e.g. {{loguniform: [1e-4, 1e-2]}}")
        kind, args = next(iter(spec.items()))
        if kind != "choice" and len(args) != 2:
            raise ConfigError(f"tune.space.{key}: {kind} takes [low, high]")
        if not args:
            raise ConfigError(f"tune.space.{key}: choice needs at least one value")
        apply(cfg, {key: args[0]})  # the key exists and takes such a value
        space[key] = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[kind](*args) \
            if kind != "choice" else tune.choice(args)
    return space


def _trial(values: dict, base: dict, stage: str, table: str | None, trials_dir: str) -> None:
    """One trial (runs in a Tune actor): the stage's Ray Train run with the trial's values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lavic_ray.train.run import run_ray

    cfg = apply(LavicConfig.model_validate(base), values)
    out = Path(trials_dir) / tune.get_context().get_trial_id()
    run_ray(stage, cfg, out, table, callbacks=[TuneReportCallback()])


def run_tune(cfg: LavicConfig, art: Artifacts) -> dict:
    """Run the search described by ``cfg.tune`` over ``cfg`` (dataset and model already resolved).

    Returns the best trial's values and metric, and where the results and the best preset are.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from lavic_ray import workflow
    from lavic_ray.train.run import absolute_paths

    t = cfg.tune
    space = search_space(cfg)
    _require_state_api()
    stage_cfg = cfg.stage1 if t.stage == "stage1" else cfg.stage2
    table = None
    if t.stage == "stage2":
        vcfg, table_path = workflow.variant(cfg, art, cfg.job.variant)
        cfg = vcfg
        table = str(table_path) if table_path else None
        if table_path is not None and not storage.exists(table_path):
            raise InputMissing(f"stage 2 reads {table_path}, which is missing (run jobs/embed.py first)")
    max_t = stage_cfg.max_steps or stage_cfg.step_budget or 10**9
    out = art.tune(t.stage)
    trials_dir = (out / "trials").resolve()
    trainable = tune.with_parameters(_trial, base=absolute_paths(cfg).model_dump(mode="json"), stage=t.stage,
                                     table=str(Path(table).resolve()) if table else None, trials_dir=str(trials_dir))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": TRIAL_DRIVER_CPUS, **cfg.placement.cpu_resources()}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=t.mode, num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
            scheduler=ASHAScheduler(time_attr="step", max_t=max_t, grace_period=t.grace_period, reduction_factor=t.reduction_factor),
        ),
        run_config=tune.RunConfig(name="search", **storage.train_storage(out.resolve())),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        metrics = r.metrics or {}
        rows.append({**{k: (r.config or {}).get(k) for k in space}, t.metric: metrics.get(t.metric), "step": metrics.get("step"),
                     "error": str(r.error).splitlines()[0] if r.error else "", "trial": metrics.get("trial_id", r.path and Path(r.path).name)})
    _write_results(out, rows, list(space), t.metric)
    scored = [r for r in grid if r.metrics and isinstance(r.metrics.get(t.metric), (int, float)) and math.isfinite(r.metrics[t.metric])]
    if not scored:
        raise RuntimeError(f"no trial reported {t.metric}; see {out / 'results.md'}")
    best = grid.get_best_result(metric=t.metric, mode=t.mode, scope="all")
    values = {k: best.config[k] for k in space}
    best_cfg = apply(cfg, values)
    header = (f"# The best of {len(rows)} trials of a Ray Tune search over {t.stage} ({t.metric} {t.mode}): {values}\n"
              f"# Use it with any job: ray job submit --working-dir . -- python jobs/recommend.py --config {out / 'best.yaml'}\n")
    atomic_write_text(out / "best.yaml", header + config_to_yaml(best_cfg))
    for name in ("results.csv", "results.md", "best.yaml"):
        storage.publish(out / name)
    log.info("tune: best %s = %s with %s", t.metric, best.metrics.get(t.metric), values)
    return {"best": values, t.metric: best.metrics.get(t.metric), "trials": len(rows), "results": str(out / "results.md"),
            "preset": str(out / "best.yaml")}


def _require_state_api() -> None:
    """Ray Train frees a stopped trial's worker placement group only when the state API (the
    dashboard) can tell it the trial's controller is gone; without it, ASHA's first stop
    leaks CPUs and later trials wait forever (ray-project/ray#54305)."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=10)
    except Exception as e:  # the API raises several types when the dashboard is absent
        raise UserError("Ray Tune over Ray Train needs the Ray dashboard's state API (it frees stopped trials' "
                           "resources): start Ray with its dashboard (ray start --head, or ray.init(include_dashboard=True))"
                           ) from e


def _write_results(out: Path, rows: list[dict], keys: list[str], metric: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = ["trial", *keys, metric, "step", "error"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
