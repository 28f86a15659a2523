"""Where a training loop sends metrics and checkpoints: local files, or Ray Train.

The loop only sees :class:`Reporter`. A plain run (one GPU, a benchmark) uses
:class:`LocalReporter`; under ``TorchTrainer`` :class:`RayReporter` forwards to
``ray.train.report`` and restores from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lavic_ray.artifacts import atomic_write_text
from lavic_ray.errors import InvalidInput

LATEST = "LATEST"


#: the metric each checkpoint is reported with for Ray Train's ``CheckpointConfig`` to rank it by: the
#: validation metric, signed so that higher is better
SCORE_KEY = "checkpoint_score"
#: the score of a checkpoint taken without a validation (it is kept for resuming, never as the best)
UNSCORED = -1e30


class Reporter:
    rank: int = 0
    #: True when the system behind the reporter keeps the best checkpoint (Ray Train's ``CheckpointConfig``
    #: with ``checkpoint_score_attribute``): the loop then checkpoints at every improving validation and
    #: leaves ``adapter/`` to whoever reads the run's result (:func:`lavic_ray.train.run.run_ray`)
    owns_best: bool = False

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        raise NotImplementedError

    @contextmanager
    def restored(self):
        """Yield the directory of the checkpoint to resume from, or None."""
        yield None

    def new_checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="lavic_ckpt_"))


class LocalReporter(Reporter):
    """Metrics to ``run_dir/metrics.jsonl``; checkpoints to ``run_dir/checkpoints/<step>``.

    A checkpoint becomes the one to resume from only once it is complete: the
    ``LATEST`` pointer is rewritten atomically after the directory is in place, so an
    interrupted write never replaces the last good checkpoint. Older ones beyond
    ``keep`` are removed.
    """

    def __init__(self, run_dir: str | Path, rank: int = 0, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.keep = keep
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        if checkpoint_dir is None:
            return
        ckpts = self.run_dir / "checkpoints"
        ckpts.mkdir(exist_ok=True)
        final = ckpts / f"step_{int(metrics.get('step', 0)):08d}"
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(checkpoint_dir), str(final))
        atomic_write_text(ckpts / LATEST, final.name)
        kept = sorted(p for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for old in kept[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.run_dir / "checkpoints" / LATEST
        if not pointer.is_file():
            return None
        d = self.run_dir / "checkpoints" / pointer.read_text().strip()
        return d if d.is_dir() else None

    @contextmanager
    def restored(self):
        yield self.latest()

    def new_checkpoint_dir(self) -> Path:
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".incomplete_", dir=self.run_dir / "checkpoints"))


class RayReporter(Reporter):
    """Inside a Ray Train worker: ``ray.train.report`` with a ``Checkpoint`` from the directory."""

    owns_best = True

    def __init__(self):
        import ray.train

        self._train = ray.train
        self.rank = ray.train.get_context().get_world_rank()

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        ckpt = self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        self._train.report(metrics, checkpoint=ckpt)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    @contextmanager
    def restored(self):
        ckpt = self._train.get_checkpoint()
        if ckpt is None:
            yield None
        else:
            with ckpt.as_directory() as d:
                yield Path(d)


class Tracker:
    """Experiment tracking (rank 0 only): every metric the loop reports, against the optimizer step."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: Path, params: dict):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise InvalidInput("tracking.backend=tensorboard needs tensorboardX: pip install 'lavic-ray[tracking]'") from e

        self.writer = SummaryWriter(str(logdir))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, uri: str, experiment: str, run_name: str, params: dict):
        try:
            import mlflow
        except ImportError as e:
            raise InvalidInput("tracking.backend=mlflow needs MLflow: pip install 'lavic-ray[tracking]'") from e
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def make_tracker(cfg, stage_dir: Path, run_name: str, params: dict, storage_root: str | Path) -> Tracker:
    """The tracker ``tracking.backend`` asks for (a no-op for ``none``).

    Args:
        cfg: The :class:`lavic_ray.config.TrackingConfig`.
        stage_dir: The stage's output directory (TensorBoard logs go to ``<stage_dir>/tensorboard`` by default).
        run_name: The run's name in the tracker.
        params: Flat configuration values to record with the run.
        storage_root: The MLflow file store defaults to ``<storage_root>/mlruns``.
    """
    if cfg.backend == "tensorboard":
        return TensorBoardTracker(Path(cfg.uri) / run_name if cfg.uri else Path(stage_dir) / "tensorboard", params)
    if cfg.backend == "mlflow":
        from lavic_ray import storage

        uri = cfg.uri or (storage.local(storage_root) / "mlruns").resolve().as_uri()
        return MLflowTracker(uri, cfg.experiment, run_name, params)
    return Tracker()
