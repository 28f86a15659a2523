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
        for size in ("small", "7b") if job != "download" else ("7b",):  # the small model is built, not downloaded
            preset = CONFIGS / f"{job}_{size}.yaml"
            header = preset.read_text().splitlines()[:5]
            cmd = next(line for line in header if "ray job submit" in line)
            assert f"--config jobs/configs/{job}_{size}.yaml" in cmd and f"python jobs/{job}.py" in cmd
            _check_job_command(cmd.split(" -- ", 1)[1].split(" [")[0])


def test_7b_presets_are_the_papers_model_on_gpus():
    cfg = load_config(CONFIGS / "pipeline_7b.yaml")
    assert cfg.model.checkpoint == "/mnt/models/llava-v1.6-mistral-7b-hf" and cfg.model.dtype == "bfloat16"
    assert load_config(CONFIGS / "download_7b.yaml").download.repo_id == "llava-hf/llava-v1.6-mistral-7b-hf"
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
    cpu, gpu, _ = spec["workerGroupSpecs"]
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


RAYJOBS = sorted(p.stem.removeprefix("rayjob-") for p in (CLUSTER / "kuberay").glob("rayjob-*.yaml"))
IMAGE_ROOT = "/opt/lavic-ray"  # the repository's place in the image (cluster/Dockerfile WORKDIR)


def test_the_rayjobs_are_the_users_path():
    assert set(RAYJOBS) == {"download", "distill", "recommend", "index", "pipeline", "tune"}
    assert f"WORKDIR {IMAGE_ROOT}" in (CLUSTER / "Dockerfile").read_text()


@pytest.mark.parametrize("job", RAYJOBS)
def test_kuberay_rayjobs_run_existing_entry_points_on_the_cluster(job):
    rj = _load(CLUSTER / "kuberay" / f"rayjob-{job}.yaml")
    assert rj["kind"] == "RayJob" and rj["spec"]["clusterSelector"]["ray.io/cluster"] == "lavic"
    assert _load(CLUSTER / "kuberay" / "raycluster.yaml")["metadata"]["name"] == "lavic"
    # HTTPMode: the operator posts the entrypoint and runtime env to the Jobs API; nothing uploads a working_dir,
    # so the entrypoint names the image's files by absolute path
    assert rj["spec"]["submissionMode"] == "HTTPMode"
    env = yaml.safe_load(rj["spec"]["runtimeEnvYAML"])
    assert "working_dir" not in env
    entry = rj["spec"]["entrypoint"]
    assert entry.startswith(f"python {IMAGE_ROOT}/jobs/{job}.py --config {IMAGE_ROOT}/jobs/configs/")
    _check_job_command(entry.replace(IMAGE_ROOT + "/", ""))
    preset = load_config(REPO / entry.split("--config ")[1].split()[0].replace(IMAGE_ROOT + "/", ""))
    offline = env.get("env_vars", {}).get("HF_HUB_OFFLINE", "1") == "1"  # the image sets it (cluster/Dockerfile)
    if offline:  # the checkpoint is a folder on the models volume every pod mounts, never a hub id
        assert preset.model.checkpoint.startswith("/mnt/models/"), preset.model.checkpoint
    else:
        assert job == "download"


def _mounts(group: dict) -> set[str]:
    return {m["mountPath"] for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _cluster_specs() -> dict[str, dict]:
    return {"raycluster": _load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"],
            "rayservice": _load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]["rayClusterConfig"]}


@pytest.mark.parametrize("name", ["raycluster", "rayservice"])
def test_every_pod_mounts_the_weights_and_shares_one_hub_cache(name):
    """Row 1 of issue 45: the 7B presets read the weights from the models volume, and a hub download (if any) goes
    to one cache on it - never one per autoscaled pod."""
    for g in _groups(_cluster_specs()[name]):
        assert {"/mnt/lavic", "/mnt/models"} <= _mounts(g), g.get("groupName", "head")
        env = {e["name"]: e.get("value") for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert env.get("HF_HOME", "").startswith("/mnt/models/"), g.get("groupName", "head")


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
    text = (CLUSTER / "launcher-gcp.yaml").read_text()
    for script, preset in re.findall(r"python /opt/lavic-ray/(jobs/\w+\.py) --config /opt/lavic-ray/(jobs/configs/\w+\.yaml)", text):
        _check_job_command(f"python {script} --config {preset}")
    assert len(re.findall(r"python /opt/lavic-ray/jobs/", text)) == 3


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


@pytest.mark.parametrize("name", ["raycluster", "rayservice"])
def test_the_ingress_token_comes_from_a_secret_where_the_ingress_runs(name):
    """Row 5 of issue 45: `serve deploy serve_configs/production.yaml` on the RayCluster, or the RayService: the
    ingress replicas (on the group advertising their custom resource) read the bearer token from a Secret."""
    app = _load(REPO / "serve_configs" / "production.yaml")["applications"][0]
    var = app["args"]["auth_token_env"]
    ingress = next(d for d in app["deployments"] if d["name"] == "LavicIngress")
    marker = next(iter(ingress["ray_actor_options"]["resources"]))  # the ingress lands on the group advertising it
    spec = _cluster_specs()[name]
    groups = [g for g in spec["workerGroupSpecs"] if marker in g["rayStartParams"].get("resources", "")]
    assert groups
    for g in groups:
        env = {e["name"]: e for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "lavic-api", "key": "token"}
    assert var not in app["runtime_env"].get("env_vars", {})  # never written into the config itself


def test_every_path_the_production_app_loads_is_written_by_a_shipped_job():
    """Row 2 of issue 45: the Serve config names the stage-2 run, its table, the index and the catalog where the
    7B jobs write them under storage_root."""
    from lavic_ray.artifacts import Artifacts
    from lavic_ray.workflow import INDEX_KIND

    args = _load(REPO / "serve_configs" / "production.yaml")["applications"][0]["args"]
    cfg = load_config(CONFIGS / "index_7b.yaml")
    art = Artifacts(cfg.storage_root)
    assert args["index"] == str(art.index(INDEX_KIND)) and "index" in RAYJOBS
    assert args["stage2_dir"] == str(art.stage2("lavic")) and args["table"] == str(art.table("distilled"))
    assert args["catalog"] == cfg.dataset.root and args["checkpoint"] == cfg.model.checkpoint


#: the labels a node pool's template carries while the pool is at zero (the cluster autoscaler matches pods on
#: them before a node exists); nvidia.com/gpu.product is added by a daemon after a node boots, so it is not one
ZERO_NODE_LABELS = {"cloud.google.com/gke-accelerator", "cloud.google.com/gke-nodepool", "node.kubernetes.io/instance-type",
                    "eks.amazonaws.com/nodegroup", "karpenter.sh/nodepool", "topology.kubernetes.io/zone"}


@pytest.mark.parametrize("name", ["raycluster", "rayservice"])
def test_gpu_groups_scale_from_zero_on_gke_and_eks(name):
    """Row 9 of issue 45: GPU groups select on labels node pools carry at zero, tolerate the GPU taint, and a
    multi-GPU group exists for data-parallel training (STRICT_PACK keeps a run on one node)."""
    gpu_counts = []
    for g in _cluster_specs()[name]["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" not in limits:
            continue
        pod = g["template"]["spec"]
        assert g["minReplicas"] == 0, g["groupName"]
        assert set(pod.get("nodeSelector", {})) <= ZERO_NODE_LABELS, pod.get("nodeSelector")
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod.get("tolerations", [])
        gpu_counts.append(int(limits["nvidia.com/gpu"]))
    assert gpu_counts and min(gpu_counts) == 1
    if name == "raycluster":
        assert max(gpu_counts) == 8


def test_cluster_and_service_use_ray_token_auth():
    for name, spec in _cluster_specs().items():
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["rayVersion"] >= "2.52"  # the first Ray with token auth


def test_the_service_upgrades_without_downtime_and_survives_a_head_restart():
    """Row 10 of issue 45."""
    rs = _load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]
    assert rs["upgradeStrategy"]["type"] == "NewCluster"
    assert rs["excludeHeadPodFromServeSvc"] is True
    ft = rs["rayClusterConfig"]["gcsFaultToleranceOptions"]
    redis = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "redis.yaml").read_text())}
    host, port = ft["redisAddress"].split(":")
    assert redis["Service"]["metadata"]["name"] == host and redis["Service"]["spec"]["ports"][0]["port"] == int(port)
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    env = redis["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": secret}} in env


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*7b*.yaml")))
def test_every_model_step_of_every_7b_preset_runs_on_a_gpu(preset):
    """Row 4 of issue 45: describe included, paper_7b included."""
    cfg = load_config(CONFIGS / preset)
    assert cfg.stage1.use_gpu and cfg.stage2.use_gpu
    for pool in (cfg.describe, cfg.embed, cfg.eval.resources):
        assert pool.gpus_per_actor >= 1 and pool.device in ("auto", "cuda"), preset


# ---------------------------------------------------------------------------- the NetworkPolicy, evaluated

def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admits(policy: dict, pod_ns: str, pod_labels: dict, policy_ns: str, port: int) -> bool:
    """Whether a NetworkPolicy (Kubernetes semantics: rules OR'ed; in a peer, namespaceSelector AND podSelector;
    a peer with only podSelector is the policy's own namespace) lets a pod reach a selected pod on ``port``."""
    ns_labels = {"kubernetes.io/metadata.name": pod_ns}  # set by the API server on every namespace
    for rule in policy["spec"]["ingress"]:
        if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            ns_ok = _labels_match(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else pod_ns == policy_ns
            pod_ok = _labels_match(peer["podSelector"], pod_labels) if "podSelector" in peer else True
            if ns_ok and pod_ok:
                return True
    return False


#: the labels KubeRay (v1.7) puts on each pod kind
KUBERAY_PODS = {
    "ray worker": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker", "ray.io/cluster": "lavic"},
    "rayjob submitter (K8sJobMode)": {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": "lavic-distill",
                                      "batch.kubernetes.io/job-name": "lavic-distill"},
    "kuberay operator": {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"},
    "someone else": {"app": "web"},
}


@pytest.mark.parametrize("operator_ns", ["default", "kuberay-operator", "kuberay-system"])
def test_the_network_policy_admits_exactly_ray_pods_the_operator_and_submitters(operator_ns):
    """Row 8 of issue 45, the policy evaluated against the labels KubeRay puts on each pod kind, with the
    operator's namespace filled in as the README's command does (envsubst)."""
    import os
    import string

    text = (CLUSTER / "kuberay" / "networkpolicy.yaml").read_text()
    assert "${KUBERAY_OPERATOR_NAMESPACE}" in text
    policy = yaml.safe_load(string.Template(text).substitute({**os.environ, "KUBERAY_OPERATOR_NAMESPACE": operator_ns}))
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    ns = "ml"  # where the user applies the Ray cluster and the policy
    can = lambda who, where, port: _admits(policy, where, KUBERAY_PODS[who], ns, port)  # noqa: E731
    for port in (6379, 8265):
        assert can("ray worker", ns, port)
    assert can("rayjob submitter (K8sJobMode)", ns, 8265)
    assert can("kuberay operator", operator_ns, 8265)
    assert not can("kuberay operator", "elsewhere" if operator_ns != "elsewhere" else "x", 8265)
    assert not can("someone else", ns, 8265) and not can("someone else", operator_ns, 6379)
    assert not can("kuberay operator", operator_ns, 6379)
    assert can("someone else", "anywhere", 8000)  # Serve's port: behind the bearer token
