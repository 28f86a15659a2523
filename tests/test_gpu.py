"""The plain training loops and the scorer on CUDA (no Ray, no DeepSpeed: what a lone GPU box has).

Skipped without CUDA. On a GPU machine without the packaged SBERT (which the synthetic
catalog's retrieval step needs), point ``LAVIC_GPU_CATALOG`` at a catalog made elsewhere
with ``lavic synth``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def catalog(request) -> Path:
    env = os.environ.get("LAVIC_GPU_CATALOG")
    return Path(env) if env else request.getfixturevalue("synth_root")


def _cfg(tiny_dir, stage: str, *extra: str, catalog=None):
    from lavic_ray.config import load_config

    return load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={catalog}", f"{stage}.engine.kind=torch", f"{stage}.engine.precision=bf16",
                              f"{stage}.max_steps=4", f"{stage}.eval_every=2", f"{stage}.eval_limit=4",
                              f"{stage}.engine.micro_batch_size=2", f"{stage}.log_every=1", *extra])


def _history(out: Path) -> list[dict]:
    return [h for h in json.loads((out / "history.json").read_text()) if "train_loss" in h]


def test_stage1_plain_loop_trains_on_cuda_in_bf16(tmp_path, tiny_dir, catalog):
    from lavic_ray.train.run import run_local

    run_local("stage1", _cfg(tiny_dir, "stage1", catalog=catalog), tmp_path / "s1")
    hist = _history(tmp_path / "s1")
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert (tmp_path / "s1" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("formulation", ["listwise", "pointwise"])
def test_stage2_plain_loop_trains_on_cuda_in_bf16(tmp_path, tiny_dir, catalog, formulation):
    from lavic_ray.train.run import run_local

    cfg = _cfg(tiny_dir, "stage2", "stage2.use_images=false", f"stage2.formulation={formulation}", "stage2.negatives=3",
               catalog=catalog)
    run_local("stage2", cfg, tmp_path / "s2")
    hist = _history(tmp_path / "s2")
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert any("valid_hr@1" in h for h in json.loads((tmp_path / "s2" / "history.json").read_text()))


@pytest.mark.parametrize("formulation", ["listwise", "pointwise"])
def test_scoring_on_cuda_matches_cpu_in_every_sharing_mode(tiny_dir, formulation):
    """Batched scoring with vectors on the GPU - packed (block mask under SDPA on CUDA), cache and none - gives the
    CPU's packed numbers (fp32)."""
    from lavic_ray.data.records import Turn
    from lavic_ray.model.checkpoints import load_checkpoint
    from lavic_ray.model.lavic import NUM_VECTORS, LaViC
    from lavic_ray.model.prompts import PromptBuilder
    from lavic_ray.model.formulations import score_batch

    ck = load_checkpoint(str(tiny_dir))
    builder = PromptBuilder(ck.tokenizer, ck.image_token_id, 512)
    cands = [(f"B0000000{i:02d}", f"item {i}" + " long" * i) for i in range(10)]
    g = torch.Generator().manual_seed(0)
    table = {c: torch.randn(NUM_VECTORS, ck.model.config.text_config.hidden_size, generator=g) for c, _ in cands}
    reqs = [([Turn("submission", "a red striped shirt please")], cands), ([Turn("submission", "blue")], cands[3:][::-1])]

    def lookup(ids):
        return torch.stack([table[i] for i in ids])

    cpu = score_batch(LaViC(ck.model, ck.image_token_id).eval(), builder, formulation, reqs, lookup, sharing="packed")
    model = LaViC(ck.model.to("cuda"), ck.image_token_id).eval()
    for mode in ("packed", "cache", "none"):
        got = score_batch(model, builder, formulation, reqs, lookup, sharing=mode)
        for a, b in zip(cpu, got):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3, rtol=1e-4), mode
