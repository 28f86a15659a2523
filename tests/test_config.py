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
    cfg = load_config(p, ["synth.items=200", "eval.methods=[random]", "retrieval.bm25_stem=null"])
    assert cfg.synth.items == 200 and cfg.synth.seed == 3
    assert cfg.eval.ks == [1, 3] and cfg.eval.methods == ["random"]
    assert cfg.retrieval.bm25_stem is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("synth.itemz=5", "synth.itemz: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("synth.items=3", "synth.items"),
        ("synth.items=many", "synth.items"),
        ("synth.split.train=0.9", "must be 1"),
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
        SynthConfig(gt_in_candidates=1.5)


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


def test_concurrent_runs_counts_what_fits_on_the_cluster():
    from lavic_ray.config import Stage2Config
    from lavic_ray.workflow import concurrent_runs

    cpu = lambda **k: Stage2Config(**k)  # noqa: E731
    assert concurrent_runs(cpu(cpus_per_worker=1), {"CPU": 2.0}) == 2  # the quickstart's preset on 2 cores
    assert concurrent_runs(cpu(cpus_per_worker=0.66), {"CPU": 2.0}) == 3
    assert concurrent_runs(cpu(cpus_per_worker=2), {"CPU": 2.0}) == 1
    assert concurrent_runs(cpu(cpus_per_worker=0.5, num_workers=2), {"CPU": 2.0}) == 2
    assert concurrent_runs(cpu(cpus_per_worker=4), {"CPU": 2.0}) == 1  # never 0: one run waits for its resources
    assert concurrent_runs(cpu(use_gpu=True, num_workers=2), {"CPU": 64.0, "GPU": 8.0}) == 4


def test_small_model_section_reaches_the_build(monkeypatch, tmp_path):
    from lavic_ray import workflow
    from lavic_ray.artifacts import Artifacts
    from lavic_ray.config import load_config
    import lavic_ray.model.small as small

    seen = {}
    monkeypatch.setattr(small, "build_small_model", lambda catalog, out, **kw: seen.update(kw))
    cfg = load_config(None, ["model.checkpoint=small", "small_model.epochs=1", "small_model.contrastive_epochs=3",
                             "small_model.step_budget=7"])
    workflow.ensure_model(cfg, Artifacts(tmp_path), tmp_path / "catalog")
    assert seen["epochs"] == 1 and seen["contrastive_epochs"] == 3 and seen["llm_lora_r"] == 16
    assert seen["step_budget"] == 7 and seen["contrastive_step_budget"] is None
