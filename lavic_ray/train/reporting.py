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

LATEST = "LATEST"


class Reporter:
    rank: int = 0

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
