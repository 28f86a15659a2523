"""A Ray cluster with Ray's own autoscaler on this machine, shaped like a shipped cluster manifest.

:class:`FakeCluster` starts ``ray start --head --autoscaling-config=...`` with Ray's fake multi-node provider
(``RAY_FAKE_CLUSTER=1``; worker nodes are processes of this machine that join the head when the autoscaler adds
them), in its own temp dir, on its own ports, and stops only the processes it started - never ``ray stop``, which
would end every Ray on the machine. It runs inside a private mount namespace (``unshare``) in which ``/mnt`` and
``/opt`` are folders of the test, so the manifests' paths (``/mnt/lavic``, ``/mnt/models``, the image's
``/opt/lavic-ray``) are used exactly as written.

The node types come from the manifests as written (:func:`node_types_from_raycluster`,
:func:`node_types_from_launcher`). What a laptop cannot have is substituted, and every substitution is in
:data:`SUBSTITUTIONS` (the test applies them; nothing else is changed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
#: the fake provider's name for the head node's type
HEAD = "ray.head.default"
HERE = Path(__file__).resolve().parent

#: Everything the rehearsal changes from what the manifests and presets say, in one place.
SUBSTITUTIONS = {
    # mount roots and the image's checkout: folders of the test, bound at the same paths in a mount namespace
    "mounts": {"/mnt": "<test>/mnt", "/opt": "<test>/opt (with this checkout at /opt/lavic-ray)"},
    # model code runs on CPU inside the "GPU" workers (which advertise logical GPUs); gloo instead of NCCL
    "env": {"LAVIC_FORCE_CPU": "1"},
    # the 7B weights: a random checkpoint shaped like llava-v1.6-mistral-7b, saved where the presets expect them
    "checkpoint": "build_mistral_like -> /mnt/models/llava-v1.6-mistral-7b-hf",
    # object stores of the laptop's nodes: small (the pods' memory is not there to give)
    "object_store_memory": 200 * 2**20,
    # steps, trials and evaluation sizes: trimmed by --set overrides appended to each job's entrypoint
    "trims": ["stage1.max_steps=2", "stage2.max_steps=2", "stage1.eval_limit=4", "stage2.eval_limit=4",
              "stage1.eval_every=2", "stage2.eval_every=2", "eval.limit=6", "tune.num_samples=1",
              "tune.grace_period=1", "describe.limit=4", "describe.max_new_tokens=8",
              # the pipeline job trusts the distill and recommend jobs before it (their runs are in place): it adds
              # the evaluation and the report, not two more stage-2 variants
              "job.variants=[lavic]"],
    # Serve's HTTP proxy: on 127.0.0.1 and a free port, on the head only (every fake node is this one machine)
    "serve": {"proxy_location": "HeadOnly", "http_options.host": "127.0.0.1", "http_options.port": "<free port>"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quantity(value) -> float:
    """A Kubernetes CPU or GPU quantity as a number ("8", 8, "500m")."""
    s = str(value)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def _group_resources(group: dict, head: bool = False) -> dict:
    """The Ray resources KubeRay gives a group's pods: rayStartParams first, else the container's limits."""
    params = group.get("rayStartParams", {}) or {}
    container = group["template"]["spec"]["containers"][0]
    limits = container.get("resources", {}).get("limits", {})
    res = {"CPU": _quantity(params["num-cpus"]) if "num-cpus" in params else _quantity(limits.get("cpu", 1))}
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu"))
    if gpus is not None:
        res["GPU"] = _quantity(gpus)
    if "resources" in params:  # '"{\"cpu_node\": 1000}"': a JSON string inside a quoted string
        custom = params["resources"]
        custom = json.loads(custom) if custom.startswith('"') else custom
        res.update(json.loads(custom))
    return res


def _container_env(group: dict, secrets_: dict[tuple[str, str], str]) -> dict[str, str]:
    """A group's container env, Secret references resolved from ``secrets_`` ((name, key) -> value)."""
    env = {}
    for e in group["template"]["spec"]["containers"][0].get("env", []) or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets_[(ref["name"], ref["key"])]
    return env


def node_types_from_raycluster(spec: dict, secrets_: dict[tuple[str, str], str]) -> tuple[dict, dict]:
    """Autoscaler node types from a RayCluster spec (``spec`` of the RayCluster, or a RayService's
    ``rayClusterConfig``): the head group and each worker group with its min/max replicas, its Ray resources and
    its containers' env. Returns ``(node_types, head_env)``."""
    head = spec["headGroupSpec"]
    types = {"head": {"resources": _group_resources(head, head=True), "node_config": {}, "max_workers": 0}}
    for g in spec["workerGroupSpecs"]:
        types[g["groupName"]] = {
            "resources": _group_resources(g), "min_workers": int(g.get("minReplicas", 0)),
            "max_workers": int(g["maxReplicas"]), "node_config": {"env": _container_env(g, secrets_)},
        }
    return types, _container_env(head, secrets_)


def _docker_env(options: list[str]) -> tuple[dict[str, str], list[str]]:
    """``-e K=V`` and ``--env-file F`` of docker run options."""
    env, files = {}, []
    for opt in options:
        parts = opt.split(None, 1)
        if parts[0] == "-e" and len(parts) == 2 and "=" in parts[1]:
            k, v = parts[1].split("=", 1)
            env[k] = v
        elif parts[0] == "--env-file" and len(parts) == 2:
            files.append(parts[1])
    return env, files


def node_types_from_launcher(cluster: dict) -> tuple[dict, dict]:
    """Autoscaler node types from a cluster-launcher config, as written (head first), with the containers'
    environment of its docker run options (``-e``, and a node type's ``--env-file``). Returns
    ``(node_types, every node's env)``."""
    env, _ = _docker_env(cluster.get("docker", {}).get("run_options", []))
    types = {}
    for name, t in cluster["available_node_types"].items():
        entry = {"resources": dict(t["resources"]), "node_config": {}}
        if name == cluster["head_node_type"]:
            entry["max_workers"] = 0
        else:
            entry.update(min_workers=int(t.get("min_workers", 0)), max_workers=int(t["max_workers"]))
            type_env, files = _docker_env(t.get("docker", {}).get("worker_run_options", []))
            entry["node_config"] = {"env": type_env, "env_files": files}
        types["head" if name == cluster["head_node_type"] else name] = entry
    return types, env


class FakeCluster:
    """Ray's autoscaler on this machine with the given node types (see the module docstring).

    Args:
        workdir: The test's folder: Ray's temp dir, the autoscaling config, and the mount roots live here.
        node_types: From :func:`node_types_from_raycluster` or :func:`node_types_from_launcher`.
        env: The environment of every Ray process (the head's container env, the substitutions' switch, the
            token auth every manifest turns on).
        mnt: The folder bound at ``/mnt`` (the volumes: ``lavic``, ``models``); default ``workdir/mnt``.
        setup_commands: Shell commands run in the namespace before ``ray start`` (a launcher's head setup). With
            ``RAY_AUTH_TOKEN_PATH`` in ``env``, the token is that file's (a setup command writes it).
    """

    def __init__(self, workdir: Path, node_types: dict, env: dict[str, str], mnt: Path | None = None,
                 setup_commands: list[str] = ()):
        self.workdir = Path(workdir)
        self.node_types = node_types
        self.mnt = Path(mnt) if mnt else self.workdir / "mnt"
        self.opt = self.workdir / "opt"
        self.temp = Path("/tmp") / f"rh{secrets.token_hex(3)}"  # Ray's socket paths must stay short
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.setup_commands = list(setup_commands)
        self.token = secrets.token_hex(16)
        self.mark = f"LAVIC_REHEARSAL={secrets.token_hex(8)}"  # every process of this cluster carries it
        token = {} if "RAY_AUTH_TOKEN_PATH" in env else {"RAY_AUTH_TOKEN": self.token}
        self.env = {**os.environ, **env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "RAY_AUTH_MODE": "token", **token, "LAVIC_REHEARSAL": self.mark.split("=", 1)[1],
                    "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # the image's python is this one (``python jobs/...`` in the entrypoints finds Ray and lavic-ray)
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        # Ray's state API finds a cluster through RAY_ADDRESS, else through the default temp dir's address file, which
        # this cluster (its own temp dir) does not write: Ray Train's placement-group cleaner asks it on every run
        self.env["RAY_ADDRESS"] = f"{_node_ip()}:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.address = None
        self.links: list[str] = []

    # ------------------------------------------------------------------ namespace

    @staticmethod
    def namespace_command() -> list[str] | None:
        """``unshare`` with a private mount namespace (as root, or in a user namespace), or None if not allowed (or
        REHEARSAL_NO_NAMESPACE is set: the symlink fallback, checked on a machine that has both)."""
        if not shutil.which("unshare") or os.environ.get("REHEARSAL_NO_NAMESPACE"):
            return None
        for cmd in (["unshare", "-m"] if os.geteuid() == 0 else [], ["unshare", "-Urm"]):
            if cmd and subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
                return cmd
        return None

    #: the paths the manifests name, and where each is on this machine (the namespace's binds, or the symlinks)
    ROOTS = ("/mnt/lavic", "/mnt/models", "/opt/lavic-ray")

    @classmethod
    def can_link(cls) -> bool:
        """Without a mount namespace, root may put symlinks at the manifests' paths where nothing is."""
        return os.geteuid() == 0 and not any(os.path.lexists(r) for r in cls.ROOTS)

    @classmethod
    def available(cls) -> bool:
        return cls.namespace_command() is not None or cls.can_link()

    def _wrap(self, command: str) -> list[str]:
        ns = self.namespace_command()
        if ns is None:  # symlinks at the same paths, removed by stop()
            if not self.can_link():
                raise RuntimeError("the rehearsal needs a private mount namespace (unshare -m as root, or unshare -Urm), "
                                   "or root and free /mnt/lavic, /mnt/models, /opt/lavic-ray for symlinks")
            for root, target in zip(self.ROOTS, (self.mnt / "lavic", self.mnt / "models", REPO)):
                Path(target).mkdir(parents=True, exist_ok=True)
                Path(root).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, root)
                self.links.append(root)
            return ["sh", "-c", command]
        (self.opt / "lavic-ray").mkdir(parents=True, exist_ok=True)
        binds = (f"mount --bind {self.mnt} /mnt && mount --bind {self.opt} /opt && "
                 f"mount --bind {REPO} /opt/lavic-ray && ")
        return [*ns, "sh", "-c", binds + command]

    # ------------------------------------------------------------------ life cycle

    def autoscaling_config(self) -> dict:
        node_ip = _node_ip()
        types = {}
        for name, t in self.node_types.items():
            name = HEAD if name == "head" else name  # the fake provider's own name for the head's type
            res = dict(t["resources"])
            res["object_store_memory"] = SUBSTITUTIONS["object_store_memory"]
            types[name] = {**t, "resources": res}
        return {
            "cluster_name": "rehearsal",
            "max_workers": sum(t.get("max_workers", 0) for n, t in types.items() if n != "head"),
            "upscaling_speed": 10.0,
            "idle_timeout_minutes": 60,
            "provider": {"type": "external", "module": "rehearsal_provider.RehearsalProvider",
                         "gcs_address": f"{node_ip}:{self.gcs_port}", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "auth": {}, "head_node_type": HEAD, "available_node_types": types,
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def start(self) -> "FakeCluster":
        self.mnt.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "autoscaling.yaml"
        cfg.write_text(yaml.safe_dump(self.autoscaling_config()))
        head = self.node_types["head"]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
        ray = str(Path(sys.executable).parent / "ray")
        setup = "".join(f"{c} && " for c in self.setup_commands)
        cmd = setup + (f"{ray} start --head --port={self.gcs_port} --num-cpus={int(head.get('CPU', 0))} "
               f"--temp-dir={self.temp} --autoscaling-config={cfg} --include-dashboard=true "
               f"--dashboard-host=127.0.0.1 --dashboard-port={self.dashboard_port} "
               f"--dashboard-agent-listen-port={free_port()} "
               f"--object-store-memory={SUBSTITUTIONS['object_store_memory']} --disable-usage-stats"
               + (f" --resources='{json.dumps(custom)}'" if custom else ""))
        out = subprocess.run(self._wrap(cmd), env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        self.address = f"{_node_ip()}:{self.gcs_port}"
        if "RAY_AUTH_TOKEN_PATH" in self.env:  # the token a setup command wrote on a volume
            self.token = (self.mnt / self.env["RAY_AUTH_TOKEN_PATH"].removeprefix("/mnt/")).read_text().strip()
        self._wait_dashboard()
        return self

    def _wait_dashboard(self, timeout: float = 90) -> None:
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                req = urllib.request.Request(f"{self.dashboard_url}/api/version",
                                             headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(req, timeout=5).read()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        raise RuntimeError(f"the dashboard at {self.dashboard_url} did not answer in {timeout:.0f} s")

    def pids(self) -> list[int]:
        """Every process of this cluster: each carries the cluster's own mark in its environment (Ray's processes,
        the nodes the autoscaler added, the jobs' drivers) or its temp dir on its command line."""
        mark, temp = self.mark.encode(), str(self.temp).encode()
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                if mark in (p / "environ").read_bytes().split(b"\0") or temp in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
        return out

    def stop(self) -> None:
        """Kill the processes of this cluster only (every node's raylet, workers, GCS, dashboard, monitor)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 10
            while pids and time.monotonic() < end and self.pids():
                time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)
        for link in self.links:
            if os.path.islink(link):
                os.unlink(link)
        self.links = []

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # what did start (and the symlinks) goes
            raise

    def __exit__(self, *exc):
        self.stop()


def _node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()
