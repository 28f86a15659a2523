"""Fail before the GPUs start: a job's inputs, checked on its driver before it asks the cluster for any worker.

On an autoscaling cluster a job that fails inside its first Ray Train worker has already had a GPU node booted
for it. :func:`check` reads, in a few seconds and without torch: the checkpoint folder (a LLaVA-Next config,
every weight file its index names, the tokenizer and the image processor), the dataset root (the layout
validator, without opening images), and the storage root (a file written and removed). Every problem is one
line; :class:`PreflightFailed` carries them all, and the job exits 2.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from lavic_ray.config import LavicConfig
from lavic_ray.errors import InvalidInput

#: model.checkpoint values built under the storage root by the pipeline (not a folder a user brings)
OFFLINE_MODELS = ("small", "tiny")
#: a hub id: ``org/name`` with no path syntax
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
IMAGE_PROCESSOR = ("preprocessor_config.json", "processor_config.json")


class PreflightFailed(InvalidInput):
    """One or more inputs of a job are not usable; ``problems`` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def checkpoint_problems(checkpoint: str, what: str = "model.checkpoint") -> list[str]:
    """What is wrong with a LLaVA-Next checkpoint folder (or hub id), as one line each ([] when usable)."""
    if checkpoint in OFFLINE_MODELS:
        return []
    path = Path(checkpoint).expanduser()
    if not path.exists():
        if HUB_ID.match(checkpoint) and not checkpoint.startswith(("/", ".", "~")):
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
            if offline and not _in_hub_cache(checkpoint):
                return [f"{what}: {checkpoint} is a hub id, but HF_HUB_OFFLINE is set and it is not in the hub cache "
                        f"(HF_HOME): download it into the models volume first (jobs/download.py), and set {what} to "
                        f"that folder"]
            return []
        return [f"{what}: {path} does not exist (the folder save_pretrained or jobs/download.py writes)"]
    if not path.is_dir():
        return [f"{what}: {path} is not a folder"]
    problems = []
    config = path / "config.json"
    if not config.is_file():
        problems.append(f"{what}: {path} holds no config.json")
    else:
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (ValueError, OSError) as e:
            problems.append(f"{what}: {config} is not readable JSON ({e})")
        else:
            if model_type != "llava_next":
                problems.append(f"{what}: {config} says model_type {model_type!r}; LaViC needs a LLaVA-Next "
                                f"checkpoint (llava_next), such as llava-hf/llava-v1.6-mistral-7b-hf")
    problems += _weights_problems(path, what)
    if not any((path / f).is_file() for f in TOKENIZER):
        problems.append(f"{what}: {path} holds no tokenizer ({', '.join(TOKENIZER)})")
    if not any((path / f).is_file() for f in IMAGE_PROCESSOR):
        problems.append(f"{what}: {path} holds no image processor config ({', '.join(IMAGE_PROCESSOR)})")
    return problems


def _weights_problems(path: Path, what: str) -> list[str]:
    for index in INDEXES:
        if (path / index).is_file():
            try:
                shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, OSError) as e:
                return [f"{what}: {path / index} is not a weight index ({e})"]
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                return [f"{what}: {len(missing)} of the {len(shards)} weight files {index} names are missing "
                        f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): an interrupted download? "
                        f"rerun jobs/download.py"]
            return []
    if any((path / w).is_file() for w in WEIGHTS):
        return []
    return [f"{what}: {path} holds no weights ({', '.join(WEIGHTS + INDEXES)})"]


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def dataset_problems(root: str, domain: str, images_dir=None, max_lines: int = 5) -> list[str]:
    """What is wrong with a dataset root in the LaViC layout (errors of the validator, images not opened)."""
    from lavic_ray.data.validate import validate_root

    report = validate_root(root, images_dir, images="none")
    errors = [str(p) for p in report.errors]
    if errors:
        more = len(errors) - max_lines
        return [f"dataset.root: {e}" for e in errors[:max_lines]] + (
            [f"dataset.root: ... {more} more errors (lavic validate {root})"] if more > 0 else [])
    found = {k.split(":", 1)[1].split("/")[0] for k in report.counts if k.startswith("conversations:")}
    if domain not in found:
        return [f"dataset.domain: {root} has no conversations of domain {domain!r} (it has: "
                f"{', '.join(sorted(found)) or 'none'}; expected {root}/{domain}/{{train,valid,test}}.jsonl)"]
    return []


def storage_problems(storage_root: str) -> list[str]:
    """Whether the storage root can be written: a file is written there and removed."""
    from lavic_ray.storage import StorageError, probe_writable

    try:
        probe_writable(storage_root, f".lavic-preflight-{uuid.uuid4().hex[:8]}")
    except StorageError as e:
        return [f"storage_root: {e}"]
    return []


#: jobs that load the LLaVA-Next checkpoint somewhere in the cluster
MODEL_JOBS = ("describe", "distill", "embed", "recommend", "evaluate", "pipeline", "tune")
#: jobs that read the dataset root
DATA_JOBS = ("preprocess", "describe", "distill", "embed", "recommend", "evaluate", "pipeline", "tune", "index")


def problems(cfg: LavicConfig, job: str) -> list[str]:
    """Every problem with the inputs of ``job`` under ``cfg`` (one line each)."""
    out = []
    if job in MODEL_JOBS:
        out += checkpoint_problems(cfg.model.checkpoint)
    if job in DATA_JOBS and cfg.dataset.root:
        if not Path(cfg.dataset.root).is_dir():
            out.append(f"dataset.root: {cfg.dataset.root} is not a folder")
        else:
            out += dataset_problems(cfg.dataset.root, cfg.dataset.domain, cfg.dataset.images_dir)
    if job in MODEL_JOBS:
        for stage in ("stage1", "stage2"):
            path = getattr(cfg, stage).engine.deepspeed_config
            if path and not Path(path).is_file():
                out.append(f"{stage}.engine.deepspeed_config: {path} does not exist")
            elif path:
                try:
                    json.loads(Path(path).read_text())
                except ValueError as e:
                    out.append(f"{stage}.engine.deepspeed_config: {path} is not JSON ({e})")
    if job != "download":
        out += storage_problems(cfg.storage_root)
    return out


def check(cfg: LavicConfig, job: str) -> None:
    """Raise :class:`PreflightFailed` with every problem of ``job``'s inputs (nothing when all are usable)."""
    found = problems(cfg, job)
    if found:
        raise PreflightFailed(found)
