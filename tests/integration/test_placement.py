"""Where the 7B presets put each step, proven on a local multi-node Ray cluster without GPUs.

Three nodes, as cluster/ lays them out: a head with no CPUs for work (the job's driver runs there), a CPU
worker advertising the custom resource ``cpu_node``, and a "GPU" worker advertising one logical GPU (and a
marker). The 7B presets' resource settings run preprocess, the item table, stage 2 and evaluation with the
tiny model (``device=cpu`` forced, gloo). Ray's own state says where every actor ran: model work on the GPU
node, CPU-only work on the CPU node - and the driver never builds a model (it would fail here).
"""

from __future__ import annotations

import pytest

from lavic_ray import workflow
from lavic_ray.config import load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from lavic_ray.runtime import dashboard_port

    # another local Ray (a user's) may hold the default 8265
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                      "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port()})
    cpu = c.add_node(num_cpus=2, resources={"cpu_node": 10})
    gpu = c.add_node(num_cpus=2, num_gpus=1, resources={"gpu_marker": 1})
    ray.init(address=c.address)
    yield {"cpu": cpu.node_id, "gpu": gpu.node_id}
    ray.shutdown()
    c.shutdown()


def test_model_work_on_the_gpu_node_cpu_work_on_the_cpu_node(cluster, tmp_path, tiny_dir, synth_root, monkeypatch):
    import ray
    from ray.util.state import list_actors

    from lavic_ray.model import build

    def no_model_in_the_driver(*a, **k):
        raise AssertionError("the driver built a model")

    monkeypatch.setattr(build, "build_lavic", no_model_in_the_driver)  # this process only: actors import their own
    monkeypatch.setenv("LAVIC_FORCE_CPU", "1")  # the driver picks the collective backend: gloo for the "GPU" run
    cfg = load_config("jobs/configs/7b.yaml", [
        f"storage_root={tmp_path}", f"dataset.root={synth_root}", "dataset.domain=synthetic", f"model.checkpoint={tiny_dir}",
        "model.dtype=float32", "preprocess.workers=1", "preprocess.cpus_per_worker=1", "preprocess.shard_size=100",
        "embed.cpus_per_actor=1", "embed.device=cpu", "eval.resources.cpus_per_actor=1", "eval.resources.device=cpu",
        "eval.limit=6", "eval.methods=[lavic]", "stage2.cpus_per_worker=1", "stage2.engine.kind=torch",
        "stage2.engine.precision=fp32", "stage2.engine.gradient_checkpointing=false", "stage2.engine.micro_batch_size=1",
        "stage2.engine.grad_accumulation=1", "stage2.max_steps=2", "stage2.eval_limit=2", "stage2.max_length=512"])
    cfg, art = workflow.resolve(cfg)
    workflow.preprocess(cfg, art)
    views = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"views": str(art.preprocessed)})})
    table = workflow.embed(views, art, "undistilled")
    run = workflow.stage2(cfg, art, "lavic", table=table)
    res = workflow.evaluate_methods(cfg, art, ["lavic"], {"lavic": run}, "test", out_dirs=False)
    assert res["lavic"]["conversations"] == 6

    where: dict[str, set[str]] = {}
    for a in list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=1000):
        where.setdefault(a.class_name, set()).add(a.node_id)
    by_kind = {k: v for k, v in where.items() if any(s in k for s in ("ShardWriter", "EmbedItems", "RunActor", "RayTrainWorker"))}
    assert {k for k in by_kind if "ShardWriter" in k} and {k for k in by_kind if "RayTrainWorker" in k}, where
    for name, nodes in by_kind.items():
        want = cluster["cpu"] if "ShardWriter" in name else cluster["gpu"]
        assert nodes == {want}, (name, nodes, cluster)
