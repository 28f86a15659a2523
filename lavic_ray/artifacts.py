"""Where each stage reads and writes, under one storage root.

Stages talk only through these artifacts. Each artifact directory holds a
``config.yaml`` with the resolved configuration that produced it, written next
to the data so a result can always be traced back to its settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from lavic_ray import storage
from lavic_ray.config import config_to_yaml

CONFIG_FILE = "config.yaml"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj, config: BaseModel | None = None) -> Path:
    """Write ``obj`` as JSON (atomically) and, when given, the config beside it."""
    path = Path(path)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
    if config is not None:
        write_config(path.parent, config)
    return path


def write_config(directory: str | Path, config: BaseModel) -> Path:
    path = atomic_write_text(Path(directory) / CONFIG_FILE, config_to_yaml(config))
    storage.publish(path)
    return path


class Artifacts:
    """The artifact layout under a storage root.

    ``catalog/``            the synthetic dataset in the LaViC layout (a user's dataset stays where it is)
    ``models/<name>/``      offline checkpoints built here (``small``, ``tiny``)
    ``stage1/``             the vision adapter (``adapter/``), history, Ray Train checkpoints
    ``items/<which>.parquet`` item embedding tables (``distilled``, ``undistilled``)
    ``retrieval/<kind>/``   the saved retrieval index over the catalog (``sbert``, ``bm25``) the Serve app loads
    ``stage2/<variant>/``   stage-2 runs (``lavic``, ``lavic-title-only``, ``lavic-no-distill``)
    ``eval/<name>/``        metrics.json, predictions.jsonl, config.yaml
    ``tune/<stage>/``       Ray Tune searches: trials, results table, best preset
    ``report/``             the markdown report and its plots
    ``probe.json``          the stage-1 probe (before / after), on a synthetic catalog
    ``logs/``               each run's full log (Ray, DeepSpeed and library output included)
    """

    def __init__(self, root: str | Path):
        # absolute: paths derived from it are handed to Ray workers, which run elsewhere; under an object store, the
        # mirror of the bucket (the same path on every node: lavic_ray.storage)
        self.uri = str(root) if storage.is_remote(str(root)) else None
        self.root = storage.local(root).resolve()

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def descriptions(self) -> Path:
        return self.root / "descriptions"

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    def index(self, kind: str) -> Path:
        return self.root / "retrieval" / kind

    def table(self, which: str) -> Path:
        return self.root / "items" / f"{which}.parquet"

    def stage2(self, variant: str) -> Path:
        return self.root / "stage2" / variant

    def tune(self, stage: str) -> Path:
        return self.root / "tune" / stage

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def probe(self) -> Path:
        return self.root / "probe.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
