"""Run a stage in this process, or on Ray Train with N workers (``TorchTrainer``).

Outputs, under the stage's directory: ``adapter/`` (the best PEFT adapter),
``history.json``, ``config.yaml``, and - with Ray - Ray Train's run directory
``ray/`` holding the reported checkpoints a restarted run resumes from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from lavic_ray.artifacts import write_config
from lavic_ray.config import LavicConfig, StageConfig

log = logging.getLogger(__name__)

Stage = Literal["stage1", "stage2"]


def _stage_cfg(cfg: LavicConfig, stage: Stage) -> StageConfig:
    return cfg.stage1 if stage == "stage1" else cfg.stage2


def _make_task(stage: Stage, cfg: LavicConfig, catalog: str, table: str | None):
    if stage == "stage1":
        from lavic_ray.train.stage1 import Stage1Task

        return Stage1Task(cfg, catalog)
    from lavic_ray.train.stage2 import Stage2Task

    return Stage2Task(cfg, catalog, table)


def _tracker(stage: Stage, cfg: LavicConfig, out_dir: Path):
    from lavic_ray.train.reporting import make_tracker

    flat = {f"{stage}.{k}": v for k, v in _stage_cfg(cfg, stage).model_dump(mode="json").items()}
    flat["model.checkpoint"] = cfg.model.checkpoint
    return make_tracker(cfg.tracking, out_dir, f"{stage}-{out_dir.name}", flat, cfg.storage_root)


def run_local(stage: Stage, cfg: LavicConfig, catalog: str | Path, out_dir: str | Path, table: str | Path | None = None) -> dict:
    """One process, no Ray: for a single GPU, a benchmark, or a machine without Ray."""
    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import LocalReporter

    out_dir = Path(out_dir)
    write_config(out_dir, cfg)
    task = _make_task(stage, cfg, str(catalog), str(table) if table else None)
    return train(task, _stage_cfg(cfg, stage), LocalReporter(out_dir / "run"), out_dir, _tracker(stage, cfg, out_dir))


def _worker(config: dict) -> None:
    """``train_loop_per_worker``: rebuild the config and run the same loop."""
    import torch

    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import RayReporter

    cfg = LavicConfig.model_validate(config["cfg"])
    stage = config["stage"]
    scfg = _stage_cfg(cfg, stage)
    if not scfg.use_gpu:
        torch.set_num_threads(max(1, int(scfg.cpus_per_worker)))
    task = _make_task(stage, cfg, config["catalog"], config["table"])
    reporter = RayReporter()
    out_dir = Path(config["out_dir"])
    train(task, scfg, reporter, out_dir, _tracker(stage, cfg, out_dir) if reporter.rank == 0 else None)


def _absolute_paths(cfg: LavicConfig) -> LavicConfig:
    """The config with local paths made absolute: Ray Train workers do not run in this directory."""
    upd = {}
    if Path(cfg.model.checkpoint).exists():
        upd["model"] = cfg.model.model_copy(update={"checkpoint": str(Path(cfg.model.checkpoint).resolve())})
    if cfg.dataset.root and Path(cfg.dataset.root).exists():
        upd["dataset"] = cfg.dataset.model_copy(update={"root": str(Path(cfg.dataset.root).resolve())})
    return cfg.model_copy(update=upd) if upd else cfg


def run_ray(stage: Stage, cfg: LavicConfig, catalog: str | Path, out_dir: str | Path, table: str | Path | None = None,
            max_failures: int = 0, resume: bool = True, callbacks: list | None = None):
    """Run the stage on Ray Train (``TorchTrainer``, one worker per ``num_workers``).

    Re-running with the same ``out_dir`` resumes from the run's latest checkpoint, and so
    does a run whose worker died, up to ``max_failures`` times (``FailureConfig``).
    ``callbacks`` go to the run config (Ray Tune passes its ``TuneReportCallback``).
    Returns the ``ray.train.Result``.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scfg = _stage_cfg(cfg, stage)
    out_dir = Path(out_dir).resolve()
    cfg = _absolute_paths(cfg)
    write_config(out_dir, cfg)
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True)
    storage = out_dir / "ray"
    name = "run"
    run_config = RunConfig(
        name=name,
        storage_path=str(storage),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        failure_config=FailureConfig(max_failures=max_failures),
        callbacks=callbacks or None,
    )
    kwargs = dict(
        train_loop_per_worker=_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage": stage, "catalog": str(Path(catalog).resolve()),
                           "table": str(Path(table).resolve()) if table else None, "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=scfg.num_workers, use_gpu=scfg.use_gpu,
                                     resources_per_worker={"CPU": scfg.cpus_per_worker}),
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if scfg.use_gpu else "gloo"),
    )
    # Train V2 resumes by itself: a run with the same name and storage path starts
    # from that run's latest reported checkpoint (ray.train.get_checkpoint()).
    if resume and (storage / name).exists():
        log.info("%s: resuming the Ray Train run in %s", stage, storage / name)
    trainer = TorchTrainer(**kwargs)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not scfg.use_gpu else "cuda")
    return trainer.fit()
