"""Fail before the GPUs start: `lavic` and the jobs refuse a missing checkpoint, a bad dataset root and unwritable
storage on the driver, one line per problem, exit 2, before Ray is joined and without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lavic_ray import preflight
from lavic_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bad_inputs(tmp_path):
    data = tmp_path / "data"
    (data / "amazon_home").mkdir(parents=True)
    (data / "item2meta_train.json").write_text('{"B000000001": {"title": "a kettle",')  # cut off mid-object
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return {"checkpoint": str(tmp_path / "models" / "llava-v1.6-mistral-7b-hf"), "data": str(data),
            "storage": str(blocker / "runs")}


def _overrides(b: dict) -> list[str]:
    return [f"model.checkpoint={b['checkpoint']}", f"dataset.root={b['data']}", f"storage_root={b['storage']}"]


def test_every_problem_is_one_line(bad_inputs):
    cfg = load_config(REPO / "jobs" / "configs" / "distill_7b.yaml", _overrides(bad_inputs))
    found = preflight.problems(cfg, "distill")
    assert len(found) == 3, found
    assert found[0].startswith("model.checkpoint: ") and "does not exist" in found[0]
    assert found[1].startswith("dataset.root: ") and "item2meta_train.json" in found[1]
    assert found[2].startswith("storage_root: ") and "not writable" in found[2]
    assert all("\n" not in line for line in found)


def test_a_job_refuses_before_it_joins_the_cluster_and_without_torch(bad_inputs, tmp_path):
    """As a RayJob runs it: the entry point in a fresh process. An unreachable address proves Ray is never joined
    (joining it would fail otherwise, not exit 2); torch is never imported (it is what takes seconds)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys, runpy\n"
        f"sys.argv = ['jobs/distill.py', '--config', {str(REPO / 'jobs/configs/distill_7b.yaml')!r}, '--address', '127.0.0.1:1',"
        + "".join(f" '--set', {o!r}," for o in _overrides(bad_inputs)) + "]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'jobs' / 'distill.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('torch imported:', 'torch' in sys.modules, 'ray imported:', 'ray' in sys.modules)\n"
        "    raise\n")
    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("jobs/distill.py: error: ") for line in lines), lines
    assert "torch imported: False" in out.stdout


def test_the_lavic_command_refuses_the_same_way(bad_inputs, capsys):
    from lavic_ray.cli import main

    rc = main(["distill", "--out", str(Path(bad_inputs["storage"]).parent.parent / "s1"), "--checkpoint",
               bad_inputs["checkpoint"], "--catalog", bad_inputs["data"], "--set", f"storage_root={bad_inputs['storage']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 3 and all(e.startswith("lavic distill: error: ") for e in err)


def test_an_incomplete_download_a_wrong_model_and_an_offline_hub_id(tmp_path, monkeypatch, tiny_dir):
    import shutil

    assert preflight.checkpoint_problems(str(tiny_dir)) == []  # a real save_pretrained folder passes
    ck = tmp_path / "ck"
    shutil.copytree(tiny_dir, ck)
    weights = next(p for p in ck.iterdir() if p.name.endswith(".safetensors"))
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": weights.name, "b": "model-00002-of-00003.safetensors", "c": "model-00003-of-00003.safetensors"}}))
    found = preflight.checkpoint_problems(str(ck))
    assert len(found) == 1 and "2 of the 3 weight files" in found[0] and "jobs/download.py" in found[0]
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert any("LLaVA-Next" in p for p in preflight.checkpoint_problems(str(ck)))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    found = preflight.checkpoint_problems("llava-hf/llava-v1.6-mistral-7b-hf")
    assert len(found) == 1 and "HF_HUB_OFFLINE" in found[0] and "jobs/download.py" in found[0]


def test_a_good_dataset_and_a_missing_domain(synth_root, tmp_path):
    assert preflight.dataset_problems(str(synth_root), "synthetic") == []
    found = preflight.dataset_problems(str(synth_root), "amazon_home")
    assert len(found) == 1 and "no conversations of domain 'amazon_home'" in found[0] and "synthetic" in found[0]
    assert preflight.storage_problems(str(tmp_path / "runs")) == []
