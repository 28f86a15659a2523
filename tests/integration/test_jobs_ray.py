"""Cluster operation on a local Ray: a Ray Tune search of Ray Train trials, and the job entry points."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lavic_ray.config import load_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_a_tune_search_of_two_trials_side_by_side_on_two_cpus_writes_results_and_a_ready_preset(tmp_path, tiny_dir, synth_root, local_ray):
    from lavic_ray.tune import run_tune
    from lavic_ray.workflow import resolve

    cfg = load_config(REPO / "jobs" / "configs" / "tune_small.yaml", [
        f"storage_root={tmp_path}", f"dataset.root={synth_root}", f"model.checkpoint={tiny_dir}",
        "job.variant=lavic-title-only", "stage2.max_steps=4", "stage2.eval_every=2", "stage2.eval_limit=4",
        "stage2.engine.kind=torch", "stage2.engine.micro_batch_size=2", "tune.grace_period=2", "tune.num_samples=2"])
    cfg, art = resolve(cfg)
    out = run_tune(cfg, art)
    assert out["trials"] == 2 and set(out["best"]) == set(cfg.tune.space)
    table = (tmp_path / "tune" / "stage2" / "results.md").read_text().splitlines()
    assert len(table) == 2 + 2 and "valid_hr@1" in table[0]
    best = load_config(out["preset"])  # a whole, valid preset
    assert best.stage2.lr == pytest.approx(out["best"]["stage2.lr"]) and best.stage2.lora.r == out["best"]["stage2.lora.r"]
    trials = list((tmp_path / "tune" / "stage2" / "trials").iterdir())
    assert len(trials) == 2 and all((t / "config.yaml").is_file() for t in trials)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked, so the kernel cannot hand one
    out twice (seen in CI: two one-at-a-time picks returned the same port, and `ray start` refused)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@pytest.fixture(scope="module")
def head():
    """A local `ray start --head` cluster (2 CPUs), as a user would start one."""
    bin_dir = Path(sys.executable).parent
    # ray 2.60 turns token auth on for clusters it starts; its CLIs do not always detect that by
    # themselves (seen: `ray job submit` refusing with "RAY_AUTH_MODE is currently 'disabled'")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    port, dash, agent = _free_ports(3)  # the agent's port too: its default (52365) is taken by any other Ray here
    ray_cli = str(bin_dir / "ray")
    # its own temp dir marks this cluster's processes: the teardown stops them, not every Ray on the machine
    # (`ray stop` would also stop a user's own local Ray)
    temp = tempfile.mkdtemp(prefix="lrt_", dir="/tmp")
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--disable-usage-stats"], env=env,
                           capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    yield env, f"http://127.0.0.1:{dash}"
    _stop_processes_of(temp)
    shutil.rmtree(temp, ignore_errors=True)


def _stop_processes_of(marker: str, grace_s: float = 5) -> None:
    """Terminate (then kill) the processes whose command line names ``marker``; their workers exit with them."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or []):
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_ray_job_submit_runs_a_small_presets_job_as_its_header_says(head, tmp_path, synth_root, tiny_dir):
    """`ray job submit --working-dir . -- python jobs/distill.py --config jobs/configs/distill_small.yaml`, as the
    small preset's header says: the working directory ships lavic_ray. (The quickstart is test_quickstart's; the 7B
    presets' jobs in order, recommend picking up distill's adapter and embedding the item table itself, the
    rehearsal's.)"""
    env, address = head
    storage = tmp_path / "runs"
    tiny = [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}", "dataset.domain=synthetic", "stage1.max_steps=2",
            "stage1.engine.kind=torch", "stage1.eval_limit=4", f"storage_root={storage}"]
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--", "python", "jobs/distill.py", "--config", "jobs/configs/distill_small.yaml", *tiny]
    for _ in range(12):  # a fresh head's job agent can take a while on a busy machine; Ray says to try again
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0 and "succeeded" in done.stdout, (done.stdout + done.stderr)[-4000:]
    distilled = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert (storage / "stage1" / "adapter" / "adapter_config.json").is_file() and distilled["stage1"].endswith("stage1")
    assert max(h["step"] for h in json.loads((storage / "stage1" / "history.json").read_text())) == 2
