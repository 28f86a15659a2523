"""preprocess and describe on a local Ray (Ray Data: shard tasks, an actor pool), as on a cluster."""

import json

import pyarrow.parquet as pq
import pytest

from lavic_ray.config import load_config

pytestmark = pytest.mark.integration


def test_preprocess_on_ray_data_matches_the_plain_run(tmp_path, tiny_dir, synth_root, local_ray):
    from lavic_ray.pipeline.preprocess import run_preprocess

    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", "preprocess.shard_size=64", "preprocess.workers=2"])
    on_ray = run_preprocess(cfg, synth_root, tmp_path / "ray")
    plain = run_preprocess(cfg, synth_root, tmp_path / "plain", use_ray=False)
    assert on_ray["images"] == plain["images"] > 100 and on_ray["ok"] == plain["ok"] and on_ray["shards"] == plain["shards"]
    a = pq.read_table(tmp_path / "ray" / "shards" / "part-00001.parquet").to_pylist()
    b = pq.read_table(tmp_path / "plain" / "shards" / "part-00001.parquet").to_pylist()
    assert [(r["item_id"], r["n_views"], r["views"]) for r in a] == [(r["item_id"], r["n_views"], r["views"]) for r in b]
    # the embed job reads the shards' views on its actor pool: the same table as in one process
    from lavic_ray.model.table import VectorTable
    from lavic_ray.pipeline.embed import run_embed

    ecfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": str(synth_root), "views": str(tmp_path / "ray")})})
    t_ray = VectorTable.load(run_embed(ecfg, tmp_path / "t_ray.parquet"))
    t_one = VectorTable.load(run_embed(ecfg, tmp_path / "t_one.parquet", use_ray=False))
    ids = list(t_one.ids)
    assert sorted(t_ray.ids) == sorted(ids) and (t_ray.lookup(ids) - t_one.lookup(ids)).abs().max() < 1e-4


def test_describe_on_a_ray_data_actor_pool(tmp_path, tiny_dir, synth_root, local_ray):
    from lavic_ray.pipeline.describe import run_describe

    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", "describe.overwrite=true", "describe.limit=6",
                             "describe.batch_size=2", "describe.actors=2", "describe.max_new_tokens=4"])
    out = run_describe(cfg, synth_root, tmp_path / "d")
    assert out["described_this_run"] == 6 and out["descriptions"] == 6
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["generated_tokens"] > 0
