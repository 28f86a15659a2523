"""Both stages on Ray Train with DeepSpeed on 2 CPU workers (tiny model), the embed job between."""

import json

import pytest

from lavic_ray.config import load_config
from lavic_ray.model.table import VectorTable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_stage1_embed_stage2_on_ray_train_with_deepspeed(tmp_path, tiny_dir, synth_root, ray_local):
    from lavic_ray.pipeline.embed import run_embed
    from lavic_ray.train.run import run_ray

    common = [f"model.checkpoint={tiny_dir}"]
    for s in ("stage1", "stage2"):
        common += [f"{s}.num_workers=2", f"{s}.engine.kind=deepspeed", f"{s}.engine.zero_stage=2", f"{s}.log_every=1",
                   f"{s}.eval_limit=4", f"{s}.engine.micro_batch_size=2", f"{s}.max_steps=3", f"{s}.max_length=512"]
    cfg = load_config(None, common)
    r1 = run_ray("stage1", cfg, synth_root, tmp_path / "stage1")
    assert r1.error is None and r1.metrics["step"] == 3 and "valid_ppl" in r1.metrics
    assert r1.checkpoint is not None
    adapter = tmp_path / "stage1" / "adapter"
    assert (adapter / "adapter_config.json").is_file()

    table = run_embed(cfg, synth_root, tmp_path / "items" / "table.parquet", adapter=adapter, use_ray=True, batch_size=32)
    vt = VectorTable.load(table)
    assert len(vt) == 192 and vt.vectors.shape[1:] == (5, 64)

    r2 = run_ray("stage2", cfg, synth_root, tmp_path / "stage2", table=table)
    assert r2.error is None and r2.metrics["step"] == 3 and "valid_hr@1" in r2.metrics
    assert (tmp_path / "stage2" / "adapter" / "adapter_config.json").is_file()

    # same run directory, more steps: Ray Train restores the latest checkpoint and continues the count
    more = load_config(None, common + ["stage2.max_steps=5"])
    r3 = run_ray("stage2", more, synth_root, tmp_path / "stage2", table=table)
    assert r3.error is None and r3.metrics["step"] == 5
    history = json.loads((tmp_path / "stage2" / "history.json").read_text())
    assert [h["step"] for h in history if "train_loss" in h][-2:] == [4, 5]
