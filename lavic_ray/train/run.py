"""Run a stage in this process, or on Ray Train with N workers (``TorchTrainer``).

Outputs, under the stage's directory: ``adapter/`` (the best PEFT adapter, or the last with
``keep: last``), ``adapter_step.json`` (which step it is), ``history.json``, ``config.yaml``, and - with
Ray - Ray Train's run directory ``ray/`` holding the reported checkpoints a restarted run resumes from.
Under Ray the best checkpoint is Ray's own: ``CheckpointConfig(checkpoint_score_attribute=
"checkpoint_score")`` ranks the checkpoints by their validation metric, keeps the best and the latest,
and the driver installs ``adapter/`` from ``Result.best_checkpoints``.
The dataset is ``cfg.dataset`` (its root resolved); stage 2 also reads an item
embedding table unless it runs title-only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from lavic_ray import storage
from lavic_ray.artifacts import write_config
from lavic_ray.config import LavicConfig, StageConfig
from lavic_ray.train.reporting import SCORE_KEY

log = logging.getLogger(__name__)

Stage = Literal["stage1", "stage2"]


def stage_config(cfg: LavicConfig, stage: Stage) -> StageConfig:
    return cfg.stage1 if stage == "stage1" else cfg.stage2


def _make_task(stage: Stage, cfg: LavicConfig, table: str | None):
    """The stage's task, given what it reads: its stage config, the dataset, the model and the prompts."""
    parts = (stage_config(cfg, stage), cfg.dataset, cfg.model, cfg.prompts)
    if stage == "stage1":
        from lavic_ray.train.stage1 import Stage1Task

        return Stage1Task(*parts)
    from lavic_ray.train.stage2 import Stage2Task

    return Stage2Task(*parts, table)


def _tracker(stage: Stage, cfg: LavicConfig, out_dir: Path):
    from lavic_ray.train.reporting import make_tracker

    flat = {f"{stage}.{k}": v for k, v in stage_config(cfg, stage).model_dump(mode="json").items()}
    flat["model.checkpoint"] = cfg.model.checkpoint
    return make_tracker(cfg.tracking, out_dir, f"{stage}-{out_dir.name}", flat, cfg.storage_root)


def run_local(stage: Stage, cfg: LavicConfig, out_dir: str | Path, table: str | Path | None = None) -> dict:
    """One process, no Ray: for a single GPU, a benchmark, or a machine without Ray."""
    import torch

    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import LocalReporter

    out_dir = storage.fetch(out_dir)  # under an object store: the run so far (its checkpoints), to resume from
    write_config(out_dir, cfg)
    torch.manual_seed(stage_config(cfg, stage).seed)  # the fresh LoRA's initialisation
    task = _make_task(stage, cfg, str(table) if table else None)
    final = train(task, stage_config(cfg, stage), LocalReporter(out_dir / "run"), out_dir, _tracker(stage, cfg, out_dir))
    storage.publish(out_dir / "run")
    return final


def schema_fingerprint() -> str:
    """A short hash of the configuration schema: the driver sends it with the config, and a worker whose lavic_ray
    differs (an image that differs between head and worker groups, code changed under a running job) says so."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(LavicConfig.model_json_schema(), sort_keys=True).encode()).hexdigest()[:12]


def _worker(config: dict) -> None:
    """``train_loop_per_worker``: rebuild the config and run the same loop."""
    if config.get("schema") != schema_fingerprint():
        import lavic_ray
        from lavic_ray.errors import InvalidInput

        raise InvalidInput(
            f"this Ray Train worker's lavic_ray ({lavic_ray.__file__}) has another configuration schema than the driver's "
            f"({config.get('schema')} vs {schema_fingerprint()}): the driver and its workers run different versions "
            "(one image for the head and every worker group; no code changed under a running job)")
    cfg = LavicConfig.model_validate(config["cfg"])
    stage = config["stage"]
    scfg = stage_config(cfg, stage)
    # before DeepSpeed is imported: Ray Train does not pass the driver's environment to its workers
    import torch

    from lavic_ray.hardware import cuda_available

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if scfg.use_gpu and cuda_available() else "cpu")

    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import RayReporter

    if not scfg.use_gpu:
        torch.set_num_threads(max(1, int(scfg.cpus_per_worker)))
    torch.manual_seed(scfg.seed)  # the fresh LoRA's initialisation, the same on every worker
    task = _make_task(stage, cfg, config["table"])
    reporter = RayReporter()
    out_dir = Path(config["out_dir"])
    train(task, scfg, reporter, out_dir, _tracker(stage, cfg, out_dir) if reporter.rank == 0 else None)


def backend(scfg: StageConfig) -> str:
    """The torch.distributed backend of a run (decided by its config, not by the driver's hardware: a driver on a
    CPU head starts workers on GPU nodes): NCCL for GPU runs, gloo for CPU runs and under LAVIC_FORCE_CPU."""
    from lavic_ray.hardware import collective_backend

    return collective_backend(scfg.use_gpu)


def absolute_paths(cfg: LavicConfig) -> LavicConfig:
    """The config with local paths made absolute: Ray workers do not run in this directory."""
    upd = {}
    if Path(cfg.model.checkpoint).exists():
        upd["model"] = cfg.model.model_copy(update={"checkpoint": str(Path(cfg.model.checkpoint).resolve())})
    d = cfg.dataset
    paths: dict = {k: str(Path(v).resolve()) for k, v in (("root", d.root), ("descriptions", d.descriptions), ("views", d.views))
                   if v and Path(v).exists()}
    if d.images_dir:
        paths["images_dir"] = ([str(Path(p).resolve()) for p in d.images_dir] if isinstance(d.images_dir, list)
                               else str(Path(d.images_dir).resolve()))
    if paths:
        upd["dataset"] = d.model_copy(update=paths)
    for stage in ("stage1", "stage2"):  # a user's DeepSpeed JSON, read by the workers
        s = getattr(cfg, stage)
        if s.engine.deepspeed_config and Path(s.engine.deepspeed_config).exists():
            engine = s.engine.model_copy(update={"deepspeed_config": str(Path(s.engine.deepspeed_config).resolve())})
            upd[stage] = s.model_copy(update={"engine": engine})
    return cfg.model_copy(update=upd) if upd else cfg


#: read by Ray Train's controller when it starts a worker group; Ray passes it on from the driver's environment
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def set_worker_start_timeout(seconds: float) -> None:
    """Give the next Ray Train run ``seconds`` to start its worker group (``job.worker_start_timeout_s``).

    Ray Train reads the timeout from the environment, and passes the driver's value on to the run's
    controller; the config is the one place it is set, so it replaces a value already there (logged)."""
    value = f"{float(seconds):g}"
    old = os.environ.get(WORKER_START_TIMEOUT_ENV)
    if old is not None and old != value:
        log.info("%s=%s from the environment is replaced by job.worker_start_timeout_s=%s",
                 WORKER_START_TIMEOUT_ENV, old, value)
    os.environ[WORKER_START_TIMEOUT_ENV] = value


def run_ray(stage: Stage, cfg: LavicConfig, out_dir: str | Path, table: str | Path | None = None,
            max_failures: int | None = None, callbacks: list | None = None):
    """Run the stage on Ray Train (``TorchTrainer``, one worker per ``num_workers``).

    Re-running with the same ``out_dir`` resumes from the run's latest checkpoint (Train V2
    starts a run with the same name and storage path from its latest reported checkpoint),
    and so does a run whose worker died, up to ``max_failures`` times (default
    ``job.max_failures``). ``callbacks`` go to the run config (Ray Tune passes its
    ``TuneReportCallback``). Returns the ``ray.train.Result``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lavic_ray.runtime import ensure_ray

    scfg = stage_config(cfg, stage)
    out_dir = Path(out_dir).resolve()
    cfg = absolute_paths(cfg)
    write_config(out_dir, cfg)
    ensure_ray()
    set_worker_start_timeout(cfg.job.worker_start_timeout_s)
    ranked = scfg.keep == "best"
    run_config = RunConfig(
        name="run",
        **storage.train_storage(out_dir / "ray"),  # a folder, or the object store itself
        # ranked: the best 2 by validation score (Ray also keeps the latest, to resume from); else the last 2
        checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=SCORE_KEY if ranked else None,
                                           checkpoint_score_order="max"),
        failure_config=FailureConfig(max_failures=cfg.job.max_failures if max_failures is None else max_failures,
                                     controller_failure_limit=cfg.job.start_retries),
        callbacks=callbacks or None,
    )
    trainer = TorchTrainer(
        train_loop_per_worker=_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "schema": schema_fingerprint(), "stage": stage,
                           "table": str(Path(table).resolve()) if table else None, "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=scfg.num_workers, use_gpu=scfg.use_gpu,
                                     resources_per_worker={"CPU": scfg.cpus_per_worker},
                                     placement_strategy=scfg.placement),
        run_config=run_config,
        torch_config=TorchConfig(backend=backend(scfg)),
    )
    result = trainer.fit()
    install_adapter(result, out_dir, ranked)
    return result


def install_adapter(result, out_dir: Path, ranked: bool) -> Path:
    """Copy the adapter of the run's best checkpoint (``ranked``: by ``checkpoint_score``, among those Ray
    kept) or of its last checkpoint to ``out_dir/adapter``, and say which step it is in ``adapter_step.json``."""
    import json
    import shutil

    from lavic_ray.errors import InputMissing
    from lavic_ray.train.reporting import UNSCORED

    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SCORE_KEY, UNSCORED) > UNSCORED]
    if ranked and scored:
        ckpt, metrics = max(scored, key=lambda cm: cm[1][SCORE_KEY])
        kept = "best"
    elif result.checkpoint is not None:
        ckpt, metrics, kept = result.checkpoint, result.metrics or {}, "last"
    else:
        raise InputMissing(f"the run in {out_dir / 'ray'} reported no checkpoint: no adapter to install")
    final = out_dir / "adapter"
    tmp = out_dir / ".adapter.incoming"
    shutil.rmtree(tmp, ignore_errors=True)
    with ckpt.as_directory() as d:
        if not (Path(d) / "adapter" / "adapter_config.json").is_file():
            raise InputMissing(f"checkpoint {ckpt.path} holds no adapter/")
        shutil.copytree(Path(d) / "adapter", tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    info = {"step": metrics.get("step"), "kept": kept, "checkpoint": ckpt.path}
    info.update({k: v for k, v in metrics.items() if k.startswith("valid_")})
    (out_dir / "adapter_step.json").write_text(json.dumps(info))
    storage.publish(final)
    storage.publish(out_dir / "adapter_step.json")
    log.info("adapter: the %s checkpoint (step %s) -> %s", kept, info["step"], final)
    return final
