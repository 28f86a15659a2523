"""The rehearsal: the shipped manifests and presets, run as a cluster user runs them, on an autoscaling Ray cluster
on this machine (tests/integration/rehearsal.py).

Ray's own autoscaler with the node types of ``cluster/kuberay/raycluster.yaml`` (a head with no CPUs for work, the
CPU group, the GPU groups at zero with logical GPUs); a Mistral-shaped LLaVA-Next saved where the 7B presets
expect ``llava-v1.6-mistral-7b-hf``; a catalog in the LaViC layout on the "data volume". Then every RayJob
manifest's ``entrypoint`` and ``runtimeEnvYAML``, through the Ray Jobs API (what KubeRay's HTTPMode does), in the
order README's cluster section gives; then the RayService's ``serveConfigV2``. The same with the node types of
``cluster/launcher-gcp.yaml``, submitted as its header says (``ray job submit --working-dir .``).

Only what :data:`rehearsal.SUBSTITUTIONS` lists differs from a real cluster. It asserts: every job SUCCEEDED; the GPU
group scaled up from zero; model work ran on GPU-group nodes (and the jobs' drivers refuse to load a model:
``lavic_ray.hardware.check_not_driver``); an authenticated ``/recommend`` ranks the candidates; a request without
the token gets 401.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from rehearsal import REPO, SUBSTITUTIONS, FakeCluster, free_port, node_types_from_launcher, node_types_from_raycluster

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not FakeCluster.available() and not __import__("os").environ.get("CI"),
                                                          reason="needs a private mount namespace (unshare), or root")]
KUBERAY = REPO / "cluster" / "kuberay"
#: the order of README's cluster section (the RayService comes last)
ORDER = ["download", "distill", "recommend", "index", "pipeline", "tune"]
JOB_TIMEOUT_S = 420


def _image_env() -> dict[str, str]:
    """The image's ENV lines (cluster/Dockerfile): every pod has them."""
    env = {}
    for line in (REPO / "cluster" / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(dict(kv.split("=", 1) for kv in line[4:].split()))
    return env


def _catalog(root: Path, domain: str) -> None:
    """A catalog in the LaViC layout, as the paper's release is (no synthetic manifest or attribute truth)."""
    from lavic_ray.config import SynthConfig
    from lavic_ray.data.synthetic import generate
    from lavic_ray.retrieval import SBERTRetriever

    generate(SynthConfig(seed=3, items=96, conversations=40, domain=domain), root, SBERTRetriever())
    for f in ("synth_manifest.json", "synth_truth.json", "config.yaml"):
        (root / f).unlink(missing_ok=True)


class Rehearsal:
    """One rehearsal: the cluster, its volumes, and the calls a user makes against it."""

    def __init__(self, workdir: Path, node_types: dict, head_env: dict, api_token: str | None, volumes: Path,
                 setup_commands: list[str] = ()):
        self.cluster = FakeCluster(workdir, node_types, {**_image_env(), **head_env, **SUBSTITUTIONS["env"]}, volumes,
                                   setup_commands)
        self.api_token = api_token
        self.mnt = self.cluster.mnt

    def local(self, path: str) -> Path:
        """Where a path of the cluster's (/mnt/...) is on this machine."""
        assert path.startswith("/mnt/"), path
        return self.mnt / path.removeprefix("/mnt/")

    # ---------------------------------------------------------------- the dashboard's REST API, with Ray's token

    def api(self, method: str, path: str, body=None, timeout: float = 30):
        req = urllib.request.Request(self.cluster.dashboard_url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.cluster.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
        return json.loads(text) if text.strip() else None

    def nodes(self) -> list[dict]:
        return self.api("GET", "/api/v0/nodes?detail=true&limit=1000")["data"]["result"]["result"]

    def actors(self) -> list[dict]:
        return self.api("GET", "/api/v0/actors?detail=true&limit=10000")["data"]["result"]["result"]

    def submit(self, entrypoint: str, runtime_env: dict) -> tuple[str, str]:
        """A job through the Jobs API; waits for it to end. Returns its status and its logs."""
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.cluster.dashboard_url, headers={"Authorization": f"Bearer {self.cluster.token}"})
        end = time.monotonic() + 60
        while True:
            try:
                job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
                break
            except RuntimeError as e:  # the head's job agent registers a few seconds after the dashboard answers
                if "No available agent" not in str(e) or time.monotonic() > end:
                    raise
                time.sleep(2)
        end = time.monotonic() + JOB_TIMEOUT_S
        status = None
        while time.monotonic() < end:
            status = str(client.get_job_status(job))
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(0.5)
        return status, client.get_job_logs(job)

    def deploy(self, serve_config: dict) -> None:
        self.api("PUT", "/api/serve/applications/", serve_config)
        end = time.monotonic() + 240
        while time.monotonic() < end:
            apps = (self.api("GET", "/api/serve/applications/") or {}).get("applications", {})
            status = apps.get("lavic", {}).get("status")
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise AssertionError(f"the Serve app is {status}: {json.dumps(apps['lavic'])[:3000]}")
            time.sleep(0.5)
        raise AssertionError(f"the Serve app did not come up: {json.dumps(apps)[:3000]}")


def _trimmed(entrypoint: str) -> str:
    return entrypoint + "".join(f" --set {t}" for t in SUBSTITUTIONS["trims"])


def _serve_config(rayservice: dict, port: int) -> dict:
    cfg = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    cfg["proxy_location"] = SUBSTITUTIONS["serve"]["proxy_location"]
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": "127.0.0.1", "port": port}
    return cfg


def _post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _is_gpu(node: dict) -> bool:
    return node.get("resources_total", {}).get("GPU", 0) > 0


MODEL_ACTORS = re.compile(r"RayTrainWorker|RunActor|EmbedItems|Describer|Reranker")


def _where_model_work_ran(r: Rehearsal) -> dict[str, set[str]]:
    gpu_nodes = {n["node_id"] for n in r.nodes() if _is_gpu(n)}
    where: dict[str, set[str]] = {}
    for a in r.actors():
        if MODEL_ACTORS.search(a.get("class_name", "")):
            where.setdefault(a["class_name"], set()).add("gpu" if a["node_id"] in gpu_nodes else a["node_id"])
    return where


def _run(r: Rehearsal, jobs: list[tuple[str, str, dict]], rayservice: dict) -> dict:
    """Every job in order, then the Serve app; returns what the assertions need."""
    seen_gpu_before = any(_is_gpu(n) for n in r.nodes())
    results = {}
    for name, entrypoint, runtime_env in jobs:
        t = time.monotonic()
        status, logs = r.submit(_trimmed(entrypoint), runtime_env)
        results[name] = {"status": status, "seconds": round(time.monotonic() - t, 1), "logs": logs}
        assert status == "SUCCEEDED", f"{name}: {status}\n{logs[-6000:]}"
    gpu_nodes_after_jobs = [n["node_id"] for n in r.nodes() if _is_gpu(n)]
    port = free_port()
    r.deploy(_serve_config(rayservice, port))
    url = f"http://127.0.0.1:{port}/recommend"
    body = {"context": "<submission>Something for the kitchen, please?</submission>", "k": 3}
    return {"jobs": results, "gpu_before": seen_gpu_before, "gpu_nodes": gpu_nodes_after_jobs,
            "with_token": _post(url, body, r.api_token), "without_token": _post(url, body, None),
            "wrong_token": _post(url, body, "not-the-token"), "where": _where_model_work_ran(r)}


def _job_result(out: dict, job: str) -> dict:
    """A job's result: the JSON its driver prints last (``lavic_ray.jobs.main``)."""
    return json.loads(out["jobs"][job]["logs"].strip().splitlines()[-1])


def _assert_rehearsal(out: dict) -> None:
    assert not out["gpu_before"], "the GPU group must start at zero"
    assert out["gpu_nodes"], "the GPU group never scaled up"
    status, answer = out["with_token"]
    assert status == 200, answer
    assert len(answer["items"]) == 3 and answer["retrieved"] and answer["candidates"] == 10
    assert [i["rank"] for i in answer["items"]] == [1, 2, 3]
    assert out["without_token"][0] == 401 and out["wrong_token"][0] == 401
    assert out["where"] and all(nodes == {"gpu"} for nodes in out["where"].values()), out["where"]
    assert any("Reranker" in k for k in out["where"]) and any("RunActor" in k for k in out["where"]), out["where"]


@pytest.fixture(scope="module")
def api_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """The volumes both rehearsals mount at /mnt: the weights where the 7B presets expect them, the catalog on the
    data volume. Shared, as one storage serves two clusters: the second rehearsal finds the first one's runs and
    skips them, as a rerun does (run alone, either rehearsal does every step)."""
    from lavic_ray.config import load_config
    from lavic_ray.model.checkpoints import build_mistral_like

    mnt = tmp_path_factory.mktemp("volumes")
    preset = load_config(REPO / "jobs" / "configs" / "7b.yaml")
    local = lambda p: mnt / p.removeprefix("/mnt/")  # noqa: E731
    local(preset.model.checkpoint).mkdir(parents=True)
    build_mistral_like(local(preset.model.checkpoint), seed=0)
    _catalog(local(preset.dataset.root), preset.dataset.domain)
    return mnt


def _rayjob(name: str) -> tuple[str, dict]:
    spec = yaml.safe_load((KUBERAY / f"rayjob-{name}.yaml").read_text())["spec"]
    return spec["entrypoint"], yaml.safe_load(spec["runtimeEnvYAML"])


def test_kuberay_rehearsal(tmp_path, api_token, volumes):
    from lavic_ray.config import load_config

    rc = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    node_types, head_env = node_types_from_raycluster(rc["spec"], {("lavic-api", "token"): api_token})
    r = Rehearsal(tmp_path, node_types, head_env, api_token, volumes)
    jobs = [(name, *_rayjob(name)) for name in ORDER]
    with r.cluster:
        out = _run(r, jobs, yaml.safe_load((KUBERAY / "rayservice.yaml").read_text()))
    print("\nKubeRay rehearsal, seconds per job:", {k: v["seconds"] for k, v in out["jobs"].items()})
    _assert_rehearsal(out)
    root = r.local(load_config(REPO / "jobs" / "configs" / "7b.yaml").storage_root)
    assert _job_result(out, "download")["downloaded"] is False
    assert (root / "report" / "report.md").is_file() and (root / "tune" / "stage2" / "best.yaml").is_file()
    # recommend found distill's adapter and embedded the item table itself before its stage 2
    recommended = _job_result(out, "recommend")
    assert recommended["stage2_dir"].endswith("stage2/lavic") and recommended["table"].endswith(".parquet")
    assert (root / "stage2" / "lavic" / "adapter" / "adapter_config.json").is_file()
    assert any("RayTrainWorker" in k for k in out["where"]), out["where"]


def _launcher_commands(text: str) -> tuple[list[str], str]:
    """The launcher header's `ray job submit ... -- python ...` entrypoints (continued lines joined), in order, and
    the Serve config its `serve deploy` line names."""
    header = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    header = re.sub(r"\s*\\\n\s*", " ", header)
    jobs = [(m.group(2), json.loads(m.group(1)) if m.group(1) else {}) for m in re.finditer(
        r"ray job submit --address \S+ (?:--runtime-env-json '([^']+)' )?-- (python /opt/lavic-ray/jobs/\S+ --config \S+)", header)]
    serve = re.search(r"serve deploy (\S+)", header).group(1)
    return jobs, serve


def test_launcher_rehearsal(tmp_path, volumes):
    """The cluster launcher's node types and containers' environment (token auth from the shared volume, the API
    token from the CPU type's --env-file), its head setup commands, the jobs its header submits in order, and its
    `serve deploy` of serve_configs/production.yaml."""
    launcher = yaml.safe_load((REPO / "cluster" / "launcher-gcp.yaml").read_text())
    jobs, serve_file = _launcher_commands((REPO / "cluster" / "launcher-gcp.yaml").read_text())
    names = [j.split()[1].rsplit("/", 1)[1][:-3] for j, _ in jobs]
    assert names == ["download", "pipeline", "index"] and jobs[0][1] == {"env_vars": {"HF_HUB_OFFLINE": "0"}}
    node_types, env = node_types_from_launcher(launcher)
    r = Rehearsal(tmp_path, node_types, env, None, volumes, launcher["head_setup_commands"])
    with r.cluster:
        r.api_token = (r.local("/mnt/lavic/secrets/lavic-api.env").read_text().strip().split("=", 1)[1])
        out = _run(r, [(name, j, env) for name, (j, env) in zip(names, jobs)],
                   {"spec": {"serveConfigV2": (REPO / serve_file).read_text()}})
    print("\nlauncher rehearsal, seconds per job:", {k: v["seconds"] for k, v in out["jobs"].items()})
    _assert_rehearsal(out)
