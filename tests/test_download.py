"""jobs/download.py: the weights into the models volume once - the commit resolved and recorded, a finished folder
never downloaded again, a folder someone filled by hand kept, an incomplete download refused. The hub itself is
the one thing replaced here (no network): ``snapshot_download`` copies a local checkpoint into the folder."""

from __future__ import annotations

import json
import shutil

import pytest

from lavic_ray import download
from lavic_ray.config import load_config
from lavic_ray.errors import InvalidInput

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub(monkeypatch, tiny_dir):
    """The hub's edge: revisions resolve to SHA, snapshot_download writes the checkpoint into local_dir."""
    calls = []

    def snapshot_download(repo_id, revision=None, local_dir=None, **_):
        calls.append((repo_id, revision, str(local_dir)))
        shutil.copytree(tiny_dir, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setattr(download, "resolve_revision", lambda repo, rev: SHA if rev == "main" else rev)
    return calls


def _cfg(dest, *extra):
    return load_config("jobs/configs/download_7b.yaml", [f"model.checkpoint={dest}", *extra])


def test_downloads_once_and_records_the_commit(tmp_path, hub):
    dest = tmp_path / "models" / "llava-v1.6-mistral-7b-hf"
    out = download.download(_cfg(dest))
    assert out["downloaded"] and out["revision"] == SHA and out["requested"] == "main"
    assert hub == [("llava-hf/llava-v1.6-mistral-7b-hf", SHA, str(dest))]  # the resolved commit, not the branch
    marker = json.loads((dest / download.MARKER).read_text())
    assert marker["revision"] == SHA and marker["files"] > 3 and marker["bytes"] > 0
    again = download.download(_cfg(dest))
    assert again["downloaded"] is False and len(hub) == 1  # a rerun of the same revision downloads nothing
    pinned = download.download(_cfg(dest, f"download.revision={SHA}"))
    assert pinned["downloaded"] is False and len(hub) == 1


def test_a_checkpoint_put_there_by_hand_is_kept(tmp_path, hub, tiny_dir):
    dest = tmp_path / "ck"
    shutil.copytree(tiny_dir, dest)
    out = download.download(_cfg(dest))
    assert out["downloaded"] is False and hub == [] and not (dest / download.MARKER).exists()


def test_an_incomplete_download_is_refused(tmp_path, monkeypatch, tiny_dir):
    def partial(repo_id, revision=None, local_dir=None, **_):  # the config and tokenizer came, the weights did not
        shutil.copytree(tiny_dir, local_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", partial)
    monkeypatch.setattr(download, "resolve_revision", lambda repo, rev: SHA)
    dest = tmp_path / "ck"
    with pytest.raises(InvalidInput, match="not a usable LLaVA-Next checkpoint: .*holds no weights"):
        download.download(_cfg(dest))
    assert not (dest / download.MARKER).exists()


def test_a_hub_id_is_not_a_folder_to_download_into(hub):
    with pytest.raises(InvalidInput, match="needs the folder to download into"):
        download.download(load_config("jobs/configs/download_7b.yaml", ["model.checkpoint=llava-hf/llava-v1.6-mistral-7b-hf"]))
