"""``jobs/download.py``: a hub checkpoint into the models volume, once, for every pod of the cluster.

The presets name the checkpoint by its folder on the volume every pod mounts (``/mnt/models/...``); this job
fills that folder with ``huggingface_hub.snapshot_download(local_dir=...)``: one copy on shared storage, never one
per pod's cache. The revision is resolved to its commit before the download starts and recorded in
``<folder>/.lavic-download.json``; a rerun with the same commit finds the folder complete and downloads nothing,
and an interrupted download resumes (files already there are kept, partial ones continue). It runs on a CPU worker
(``placement.cpu_resource``), not on the head.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lavic_ray.config import LavicConfig
from lavic_ray.errors import InvalidInput
from lavic_ray.preflight import checkpoint_problems

log = logging.getLogger(__name__)

MARKER = ".lavic-download.json"
SHA = re.compile(r"^[0-9a-f]{40}$")


def resolve_revision(repo_id: str, revision: str) -> str:
    """The commit SHA of ``revision`` (a SHA is taken as it is; a branch or tag is asked of the hub)."""
    if SHA.match(revision):
        return revision
    from huggingface_hub import HfApi

    return HfApi().model_info(repo_id, revision=revision).sha


def fetch(repo_id: str, revision: str, dest: str) -> dict:
    """Download ``repo_id`` at ``revision`` into ``dest`` (resumable); returns what the marker records."""
    from huggingface_hub import snapshot_download

    sha = resolve_revision(repo_id, revision)
    log.info("downloading %s at %s (%s) into %s", repo_id, sha, revision, dest)
    snapshot_download(repo_id, revision=sha, local_dir=dest)
    problems = checkpoint_problems(dest, "the download")
    if problems:
        raise InvalidInput(f"{repo_id}@{sha} downloaded into {dest}, but it is not a usable LLaVA-Next checkpoint: "
                           + "; ".join(problems))
    files = [p for p in Path(dest).rglob("*") if p.is_file() and ".cache" not in p.parts]
    info = {"repo_id": repo_id, "revision": sha, "requested": revision, "files": len(files),
            "bytes": sum(p.stat().st_size for p in files)}
    (Path(dest) / MARKER).write_text(json.dumps(info, indent=1))
    return info


def download(cfg: LavicConfig) -> dict:
    """Fill ``model.checkpoint`` (a folder) with ``download.repo_id`` at ``download.revision``, unless it is there."""
    from lavic_ray.runtime import remote_call

    dest = Path(cfg.model.checkpoint)
    d = cfg.download
    if not dest.is_absolute() and not str(cfg.model.checkpoint).startswith("."):
        raise InvalidInput(f"model.checkpoint={cfg.model.checkpoint!r}: the download job needs the folder to download into "
                           f"(the models volume, e.g. /mnt/models/llava-v1.6-mistral-7b-hf)")
    marker = dest / MARKER
    if not checkpoint_problems(str(dest)):
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("repo_id") == d.repo_id and (done.get("requested") == d.revision or done.get("revision") == d.revision):
                log.info("%s is complete (%s at %s): nothing to download", dest, d.repo_id, done.get("revision"))
                return {"checkpoint": str(dest), "downloaded": False, **done}
        else:  # a checkpoint put there by hand: never overwritten
            log.info("%s already holds a LLaVA-Next checkpoint (not downloaded by this job): kept as it is", dest)
            return {"checkpoint": str(dest), "downloaded": False, "note": "a checkpoint was already there"}
    info = remote_call(fetch, d.repo_id, d.revision, str(dest), num_cpus=1, resources=cfg.placement.cpu_resources())
    return {"checkpoint": str(dest), "downloaded": True, **info}
