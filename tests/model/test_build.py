"""One way to build the model, one table of variants, one registry of formulations."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from lavic_ray.config import LavicConfig, ModelConfig, Stage2Config, load_config


def test_build_lavic_honours_the_model_section(tiny_dir, tiny):
    from lavic_ray.model.build import build_lavic

    px = tiny.image_processor([__import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64), (200, 30, 30))],
                              return_tensors="pt")
    default, _ = build_lavic(ModelConfig(checkpoint=str(tiny_dir)))
    raw, _ = build_lavic(ModelConfig(checkpoint=str(tiny_dir), scale_vectors=False, feature_layer=-1))
    with torch.no_grad():
        a = default.image_vectors(px["pixel_values"], px["image_sizes"])
        b = raw.image_vectors(px["pixel_values"], px["image_sizes"])
        hidden = tiny.model.model.vision_tower(px["pixel_values"][0], output_hidden_states=True).hidden_states[-1]
        ref = tiny.model.model.multi_modal_projector(hidden[:, 0])
    torch.testing.assert_close(a[0].norm(dim=-1), default.text_norm.expand(5), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b[0], ref, rtol=1e-4, atol=1e-5)  # layer -1, not rescaled
    assert not default.training and default.feature_layer == -2 and raw.feature_layer == -1
    half, _ = build_lavic(ModelConfig(checkpoint=str(tiny_dir), dtype="bfloat16"))
    assert next(half.parameters()).dtype == torch.bfloat16


def test_probe_builds_the_model_the_config_says(tiny_dir, synth_root, monkeypatch):
    """The stage-1 probe goes through build_lavic with the run's model section (it once ignored it)."""
    from lavic_ray.eval import probe
    from lavic_ray.model import build

    seen = {}
    real = build.build_lavic

    def spy(model_cfg, **kw):
        seen["cfg"] = model_cfg
        return real(model_cfg, **kw)

    monkeypatch.setattr(build, "build_lavic", spy)
    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}", "model.scale_vectors=false",
                             "model.feature_layer=-1"])
    truth = __import__("json").loads((synth_root / "synth_truth.json").read_text())["items"]
    out = probe.probe_descriptions(cfg, sorted(truth)[:2], max_new_tokens=2)
    assert out["items"] == 2 and seen["cfg"].scale_vectors is False and seen["cfg"].feature_layer == -1
    assert out["colour_chance"] == 1 / 8 and out["pattern_chance"] == 1 / 4  # what near_chance judges against


def test_formulations_registry_matches_the_config():
    from lavic_ray.model.formulations import FORMULATIONS, make_formulation

    assert set(FORMULATIONS) == set(get_args(Stage2Config.model_fields["formulation"].annotation))
    for name in FORMULATIONS:
        f = make_formulation(Stage2Config(formulation=name))
        assert f.name == name and f.describe()
    assert make_formulation(Stage2Config(formulation="listwise")).generates_ids


def test_the_variant_table_drives_config_methods_and_quickstart():
    from lavic_ray.eval.evaluate import METHODS
    from lavic_ray.quickstart import methods_of
    from lavic_ray.variants import VARIANTS

    assert set(get_args(LavicConfig.model_fields["job"].annotation.model_fields["variant"].annotation)) == set(VARIANTS)
    everything = load_config(None, ["eval.methods=[lavic-generate]"])
    assert set(VARIANTS) <= set(METHODS) and set(VARIANTS) | {"lavic-generate"} <= set(methods_of(everything))
    assert {v.name for v in VARIANTS.values() if not v.use_images} == {"lavic-title-only"}
    with pytest.raises(ValueError, match="job.variant"):
        load_config(None, ["job.variant=lavic-xl"])


def test_one_retriever_factory_reads_the_retrieval_section():
    from lavic_ray.config import RetrievalConfig
    from lavic_ray.errors import UserError
    from lavic_ray.retrieval import make_retriever

    r = make_retriever("bm25", RetrievalConfig())
    assert (r.k1, r.b, r.stem) == (1.5, 0.75, "english")
    with pytest.raises(UserError, match="unknown retriever"):
        make_retriever("tfidf")


def test_task_is_abstract_and_engines_share_one_interface():
    from lavic_ray.config import EngineConfig
    from lavic_ray.train.engine import Engine, TorchEngine, make_engine
    from lavic_ray.train.loop import Task

    class Half(Task):
        def module(self):
            return torch.nn.Linear(2, 1)

    with pytest.raises(TypeError, match="abstract"):
        Half()
    e = make_engine(torch.nn.Linear(2, 1), EngineConfig(kind="torch"), lr=0.1, weight_decay=0.0)
    assert isinstance(e, TorchEngine) and isinstance(e, Engine)
