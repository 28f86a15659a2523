"""Both stages on Ray Train with DeepSpeed on 2 CPU workers (tiny model; stage 2 with ZeRO-3), the embed job between."""

import json

import pytest

from lavic_ray.config import load_config
from lavic_ray.model.table import VectorTable

pytestmark = pytest.mark.integration

# a worker group that cannot start (a dead worker's resources never freed, a machine too busy) fails the run
# within ~10 min, inside the test timeout, instead of Ray retrying the start forever
BOUNDED = ["job.worker_start_timeout_s=300", "job.start_retries=1"]


def test_stage1_embed_stage2_on_ray_train_with_deepspeed(tmp_path, tiny_dir, synth_root, local_ray):
    from lavic_ray.pipeline.embed import run_embed
    from lavic_ray.train.run import run_ray

    common = [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}", "embed.batch_size=32", *BOUNDED]
    for s, zero in (("stage1", 2), ("stage2", 3)):  # stage 2 with ZeRO-3: the model built sharded over the 2 workers
        common += [f"{s}.num_workers=2", f"{s}.engine.kind=deepspeed", f"{s}.engine.zero_stage={zero}", f"{s}.log_every=1",
                   f"{s}.eval_limit=4", f"{s}.engine.micro_batch_size=2", f"{s}.max_steps=3", f"{s}.max_length=512"]
    cfg = load_config(None, common + ["stage2.eval_every=1"])
    r1 = run_ray("stage1", cfg, tmp_path / "stage1")
    assert r1.error is None and r1.metrics["step"] == 3 and "valid_ppl" in r1.metrics
    assert r1.checkpoint is not None
    adapter = tmp_path / "stage1" / "adapter"
    assert (adapter / "adapter_config.json").is_file()

    table = run_embed(cfg, tmp_path / "items" / "table.parquet", adapter=adapter, use_ray=True)
    vt = VectorTable.load(table)
    assert len(vt) == 192 and vt.vectors.shape[1:] == (5, 64)

    r2 = run_ray("stage2", cfg, tmp_path / "stage2", table=table)
    assert r2.error is None and r2.metrics["step"] == 3 and "valid_hr@1" in r2.metrics
    assert (tmp_path / "stage2" / "adapter" / "adapter_config.json").is_file()
    # the installed adapter is Ray's best checkpoint (CheckpointConfig ranks them by validation HR@1)
    valid = [(h["step"], h["valid_hr@1"]) for h in json.loads((tmp_path / "stage2" / "history.json").read_text())
             if "valid_hr@1" in h]
    best_step = max(valid, key=lambda sv: (sv[1], -sv[0]))[0]  # the first of equals: a tie is no improvement
    kept = json.loads((tmp_path / "stage2" / "adapter_step.json").read_text())
    assert kept["kept"] == "best" and kept["step"] == best_step, (kept, valid)


def test_a_killed_training_worker_resumes_from_its_last_checkpoint(tmp_path, tiny_dir, synth_root, local_ray):
    """SIGKILL a Ray Train worker after its first checkpoint: FailureConfig restarts the worker group,
    which resumes from the latest reported checkpoint; steps and losses continue to the end."""
    import threading
    import time

    import psutil
    import ray

    from lavic_ray.train.run import run_ray

    steps_total = 8
    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}", "stage2.use_images=false", "stage2.engine.kind=deepspeed",
                             "stage2.log_every=1", "stage2.checkpoint_every=2", "stage2.eval_every=1000",
                             f"stage2.max_steps={steps_total}", "stage2.engine.micro_batch_size=2", "stage2.max_length=512",
                             "stage2.eval_limit=2", "stage2.formulation=listwise", *BOUNDED])
    out = tmp_path / "stage2"
    killed: dict = {}
    # this test's Ray (the fixture's, started by this process), even when another runs on the machine: its workers
    # are its raylet's children, and Ray titles each by its actor class
    raylet = psutil.Process(ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid)

    def registered_checkpoints() -> int:
        # the controller's record, not the checkpoint folder: a folder appears while it is still
        # being written, before the controller knows it, and a restart then begins from scratch
        try:
            snap = json.loads((out / "ray" / "run" / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return 0
        return len(snap.get("checkpoint_results", []))

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if registered_checkpoints():
                for p in raylet.children(recursive=True):
                    try:
                        title = p.cmdline()
                    except psutil.Error:
                        continue
                    if title and title[0].startswith("ray::RayTrainWorker"):
                        p.kill()  # SIGKILL
                        killed["pid"] = p.pid
                        return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    result = run_ray("stage2", cfg, out, max_failures=1)
    watcher.join(timeout=5)
    assert killed, "the run ended before a worker could be killed"
    assert result.error is None and result.metrics["step"] == steps_total
    history = [h for h in json.loads((out / "history.json").read_text()) if "train_loss" in h]
    steps = [h["step"] for h in history]
    assert steps == list(range(1, steps_total + 1)), steps  # every step once
    resumed = json.loads((out / "resumed.json").read_text())["resumed_at_steps"]
    assert len(resumed) == 1 and resumed[0] >= 2 and resumed[0] % 2 == 0  # from a checkpoint, not from scratch
    losses = [h["train_loss"] for h in history]
    assert all(v == v and v < 20 for v in losses)
