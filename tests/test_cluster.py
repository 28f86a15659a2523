"""The cluster manifests, job entry points and presets hang together: every file they name
exists, every preset loads, the Serve import path resolves and the RayService runs the
production Serve config."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from lavic_ray.config import load_config
from lavic_ray.jobs import JOBS

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CONFIGS = REPO / "jobs" / "configs"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _check_job_command(command: str) -> None:
    """``python jobs/<job>.py --config <preset> [overrides]``: the script and preset exist, the preset loads."""
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[1].startswith("jobs/"), command
    script = REPO / argv[1]
    assert script.is_file(), f"{command}: {script} missing"
    assert script.stem in JOBS
    preset = REPO / argv[argv.index("--config") + 1]
    assert preset.is_file(), f"{command}: {preset} missing"
    load_config(preset)


def test_every_job_has_an_entry_point_and_small_and_7b_presets():
    for job in JOBS:
        script = REPO / "jobs" / f"{job}.py"
        assert script.is_file() and f'main("{job}")' in script.read_text()
        for size in ("small", "7b"):
            preset = CONFIGS / f"{job}_{size}.yaml"
            header = preset.read_text().splitlines()[:5]
            cmd = next(line for line in header if "ray job submit" in line)
            assert f"--config jobs/configs/{job}_{size}.yaml" in cmd and f"python jobs/{job}.py" in cmd
            _check_job_command(cmd.split(" -- ", 1)[1].split(" [")[0])


def test_7b_presets_are_the_papers_model_on_gpus():
    cfg = load_config(CONFIGS / "pipeline_7b.yaml")
    assert cfg.model.checkpoint == "llava-hf/llava-v1.6-mistral-7b-hf" and cfg.model.dtype == "bfloat16"
    for stage in (cfg.stage1, cfg.stage2):
        assert stage.use_gpu and stage.engine.kind == "deepspeed" and stage.engine.precision == "bf16"
        assert stage.engine.gradient_checkpointing
    assert (cfg.stage1.lora.r, cfg.stage1.lora.alpha, cfg.stage1.lr) == (8, 32, 5e-5)
    assert cfg.stage2.formulation == "listwise"


def test_kuberay_raycluster_has_a_cpu_head_and_autoscaling_single_gpu_workers():
    rc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("job", ["distill", "recommend", "pipeline"])
def test_kuberay_rayjobs_run_existing_entry_points_on_the_cluster(job):
    rj = _load(CLUSTER / "kuberay" / f"rayjob-{job}.yaml")
    assert rj["kind"] == "RayJob" and rj["spec"]["clusterSelector"]["ray.io/cluster"] == "lavic"
    assert _load(CLUSTER / "kuberay" / "raycluster.yaml")["metadata"]["name"] == "lavic"
    _check_job_command(rj["spec"]["entrypoint"])
    assert f"jobs/{job}.py" in rj["spec"]["entrypoint"]
    yaml.safe_load(rj["spec"]["runtimeEnvYAML"])


def test_rayservice_runs_the_production_serve_config_and_its_import_path_resolves():
    rs = _load(CLUSTER / "kuberay" / "rayservice.yaml")
    assert rs["kind"] == "RayService"
    serve_cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    production = _load(REPO / "serve_configs" / "production.yaml")
    assert serve_cfg["applications"] == production["applications"]
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"], "the service needs GPU workers"
    for cfg_file in ("local.yaml", "production.yaml"):
        for app in _load(REPO / "serve_configs" / cfg_file)["applications"]:
            module, attr = app["import_path"].split(":")
            builder = getattr(importlib.import_module(module), attr)
            from lavic_ray.serve.schema import ServeArgs

            ServeArgs(**app["args"])  # every arg is one build_app takes
            assert callable(builder)
            names = {d["name"] for d in app["deployments"]}
            assert names <= {"LavicIngress", "Retriever", "Reranker"}


def test_cluster_launcher_has_a_cpu_head_and_gpu_worker_groups():
    cl = _load(CLUSTER / "launcher-gcp.yaml")
    types = cl["available_node_types"]
    assert cl["head_node_type"] in types and types[cl["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu)
    assert sum(t["max_workers"] for t in gpu) <= cl["max_workers"]
    assert re.search(r"jobs/\w+\.py --config jobs/configs/\w+\.yaml", (CLUSTER / "launcher-gcp.yaml").read_text())


def test_dockerfile_copies_what_the_manifests_run():
    text = (CLUSTER / "Dockerfile").read_text()
    for path in ("lavic_ray", "jobs", "serve_configs"):
        assert f"COPY {path}" in text and (REPO / path).is_dir()
