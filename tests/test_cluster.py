"""The cluster manifests, job entry points and presets hang together: every file they name
exists, every preset loads, the Serve import path resolves and the RayService runs the
production Serve config."""

from __future__ import annotations

import importlib
import json
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


def test_kuberay_raycluster_has_a_workless_head_cpu_workers_and_autoscaling_single_gpu_workers():
    rc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    cpu, gpu = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    _check_cpu_group(cpu)


def _check_cpu_group(group: dict) -> None:
    """A CPU worker group that advertises the custom resource the 7B presets' CPU-only work asks for."""
    marker = load_config(CONFIGS / "7b.yaml").placement.cpu_resource
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {marker: 1000}


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


# ---------------------------------------------------------------------------- schemas

SCHEMAS = CLUSTER / "schemas" / "kuberay-v1.7.0"


def _closed(schema):
    """The CRD schema with unknown fields rejected: every object that lists its properties (and does not say
    x-kubernetes-preserve-unknown-fields) allows no others - Kubernetes would silently prune them."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(x) for x in schema]
    return schema


def _crd_errors(doc: dict) -> list[str]:
    import jsonschema

    kind = doc["kind"].lower()
    schema = _closed(json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


MANIFESTS = sorted(p.name for p in (CLUSTER / "kuberay").glob("ray*.yaml"))


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_kuberay_manifest_validates_against_the_crd(name):
    doc = _load(CLUSTER / "kuberay" / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert _crd_errors(doc) == []


def test_the_crd_check_rejects_unknown_and_mistyped_fields():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    doc["spec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo Kubernetes would prune without a word
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    errors = "\n".join(_crd_errors(doc))
    assert "rayStartParam" in errors and "maxReplicas" in errors


def test_the_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cl = _load(CLUSTER / "launcher-gcp.yaml")
    jsonschema.validate(cl, schema)
    types = cl["available_node_types"]
    marker = load_config(CONFIGS / "7b.yaml").placement.cpu_resource
    assert [t for t in types.values() if t["resources"].get(marker) and not t["resources"].get("GPU")], "a CPU worker type"
    for t in types.values():
        if t["resources"].get("GPU"):  # the NVIDIA driver installs on first boot and the node waits for it
            items = {i["key"]: i["value"] for i in t["node_config"]["metadata"]["items"]}
            assert items["install-nvidia-driver"] == "True"
            assert any("nvidia-smi" in c for c in t["initialization_commands"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cl, "max_worker": 3}, schema)


def test_serve_configs_are_valid_serve_deploy_schemas():
    from ray.serve.schema import ServeDeploySchema

    docs = {f.name: _load(f) for f in (REPO / "serve_configs").glob("*.yaml")}
    docs["rayservice serveConfigV2"] = yaml.safe_load(_load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]["serveConfigV2"])
    for name, doc in docs.items():
        ServeDeploySchema.model_validate(doc)
        assert _unknown_serve_keys(doc) == [], name
    assert _unknown_serve_keys({**docs["local.yaml"], "applicatons": []}) == ["applicatons"]


def _unknown_serve_keys(doc: dict) -> list[str]:
    """Keys Serve's schemas do not define (ServeDeploySchema itself ignores them), at the config, application
    and deployment levels."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    bad = [k for k in doc if k not in ServeDeploySchema.model_fields]
    for app in doc.get("applications", []):
        bad += [f"{app.get('name')}.{k}" for k in app if k not in ServeApplicationSchema.model_fields]
        for dep in app.get("deployments", []):
            bad += [f"{app.get('name')}.{dep.get('name')}.{k}" for k in dep if k not in DeploymentSchema.model_fields]
    return bad


def test_every_claim_the_pods_mount_is_defined_and_shared():
    claims = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "storage.yaml").read_text())}
    assert claims["lavic-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    used = set(re.findall(r"claimName:\s*(\S+?)[}\s]", "".join((CLUSTER / "kuberay" / m).read_text() for m in MANIFESTS)))
    assert used and used <= set(claims)


def test_multi_gpu_training_is_kept_on_one_node():
    cfg = load_config(CONFIGS / "pipeline_7b.yaml")
    assert cfg.stage1.placement == cfg.stage2.placement == "STRICT_PACK"


def test_the_service_requires_a_token_from_a_secret_where_its_ingress_runs():
    rs = _load(CLUSTER / "kuberay" / "rayservice.yaml")
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    var = app["args"]["auth_token_env"]
    ingress = next(d for d in app["deployments"] if d["name"] == "LavicIngress")
    marker = next(iter(ingress["ray_actor_options"]["resources"]))  # the ingress lands on the group advertising it
    groups = [g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if marker in g["rayStartParams"].get("resources", "")]
    assert groups
    for g in groups:
        env = {e["name"]: e for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "lavic-api", "key": "token"}
    assert var not in app["runtime_env"].get("env_vars", {})  # never written into the config itself


def test_the_head_admits_ray_pods_and_the_operator_and_serves_8000_to_all():
    np = _load(CLUSTER / "kuberay" / "networkpolicy.yaml")
    assert np["kind"] == "NetworkPolicy" and np["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    open_ports = {p["port"] for r in np["spec"]["ingress"] if "from" not in r for p in r.get("ports", [])}
    assert open_ports == {8000}  # the dashboard (8265) and GCS (6379) only from the selected peers
    for r in np["spec"]["ingress"]:
        if "from" in r:
            assert r["from"] and all(("podSelector" in f) or ("namespaceSelector" in f) for f in r["from"])
