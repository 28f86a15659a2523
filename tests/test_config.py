import pytest

from lavic_ray.config import ConfigError, LavicConfig, SynthConfig, config_to_yaml, load_config, parse_overrides


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = LavicConfig()
    p = tmp_path / "c.yaml"
    p.write_text(config_to_yaml(cfg))
    assert load_config(p) == cfg


def test_yaml_then_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("synth:\n  items: 100\n  seed: 3\neval:\n  ks: [1, 3]\n")
    cfg = load_config(p, ["synth.items=200", "eval.methods=[random]", "dataset.images_dir=null"])
    assert cfg.synth.items == 200 and cfg.synth.seed == 3
    assert cfg.eval.ks == [1, 3] and cfg.eval.methods == ["random"]
    assert cfg.dataset.images_dir is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("synth.itemz=5", "synth.itemz: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("synth.items=3", "synth.items"),
        ("synth.items=many", "synth.items"),
        ("synth.decisive=[motif,build]", "gadgets scheme only"),
        ("stage1.elastic_threads=true", "stage1.elastic_threads: unknown key"),  # stage 2's
    ],
)
def test_bad_overrides_name_the_path(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("synth:\n  colours: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "synth.colours" in str(e.value)


def test_malformed_override_and_file():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["synth.items"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_section_types_are_validated():
    with pytest.raises(Exception):
        SynthConfig(items=3)


def test_files_merge_in_order_then_overrides(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("stage2:\n  lr: 0.1\n  epochs: 3\n")
    b.write_text("stage2:\n  lr: 0.2\n")
    cfg = load_config([a, b], ["stage2.epochs=4"])
    assert (cfg.stage2.lr, cfg.stage2.epochs) == (0.2, 4)
    assert cfg.stage2.lora.r == 16  # untouched defaults survive partial sections


def test_quickstart_preset_is_valid():
    from lavic_ray.quickstart import quickstart_config

    cfg = quickstart_config(None, ["stage2.formulation=listwise"])
    assert cfg.model.checkpoint == "small" and cfg.stage2.formulation == "listwise"
    assert cfg.stage1.engine.kind == "deepspeed"


def test_include_merges_the_named_file_first_relative_to_the_including_one(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text("stage2:\n  lr: 0.1\n  epochs: 3\n")
    top = tmp_path / "top.yaml"
    top.write_text("include: base/b.yaml\nstage2:\n  lr: 0.2\n")
    cfg = load_config(top)
    assert (cfg.stage2.lr, cfg.stage2.epochs) == (0.2, 3)
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="included from"):
        load_config(tmp_path / "missing.yaml")


def test_no_step_sizes_itself_from_what_the_cluster_holds():
    """On an autoscaling cluster a GPU group may be at zero when a job starts: concurrency comes from the config,
    Ray queues what does not fit, and the autoscaler adds nodes. Only the quickstart's elastic CPU threads (one
    machine) and a log line read the cluster's resources."""
    import ast

    from tests.test_layering import PKG

    readers = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("cluster_resources", "available_resources"):
                readers.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    allowed = {"lavic_ray/workflow.py", "lavic_ray/runtime.py"}
    assert {r.split(":")[0] for r in readers} <= allowed, readers


def test_concurrency_is_the_configs():
    from lavic_ray.config import actor_pool, load_config

    assert load_config("jobs/configs/7b.yaml").job.concurrent_runs == 3
    assert load_config("lavic_ray/presets/quickstart_small.yaml").job.concurrent_runs == 2
    pool = actor_pool(4)  # starts with one actor; Ray queues the others until the cluster has room
    assert (pool.min_size, pool.max_size) == (1, 4)


def test_small_model_section_reaches_the_build(monkeypatch, tmp_path):
    from lavic_ray import workflow
    from lavic_ray.artifacts import Artifacts
    from lavic_ray.config import load_config
    import lavic_ray.model.small as small

    seen = {}
    monkeypatch.setattr(small, "build_small_model", lambda catalog, out, **kw: seen.update(kw))
    cfg = load_config(None, ["model.checkpoint=small", "small_model.epochs=1", "small_model.step_budget=7"])
    workflow.ensure_model(cfg, Artifacts(tmp_path), tmp_path / "catalog")
    assert seen == {"epochs": 1, "lr": 1e-3, "batch_size": 8, "step_budget": 7, "llm_lora_r": 16, "vision_image_size": 56,
                    "seed": 0}


def test_the_small_models_view_size_must_fit_the_dinov2_patch():
    from lavic_ray.config import load_config

    assert load_config(None, ["small_model.vision_image_size=112"]).small_model.vision_image_size == 112
    with pytest.raises(ConfigError, match="multiple of 14"):
        load_config(None, ["small_model.vision_image_size=64"])


def test_every_setting_is_described_briefly_and_docs_config_md_is_current():
    """docs/config.md is generated from the schema (python -m lavic_ray.config > docs/config.md): it fails here when a
    setting changed and the reference did not."""
    from pathlib import Path

    from pydantic import BaseModel

    from lavic_ray.config import LavicConfig, reference_markdown

    def leaves(model):
        for name, f in model.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                yield from leaves(f.annotation)
            else:
                yield name, f

    found = list(leaves(LavicConfig))
    assert [n for n, f in found if not f.description or len(f.description) > 120] == []
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == reference_markdown(), "docs/config.md is stale: python -m lavic_ray.config > docs/config.md"
