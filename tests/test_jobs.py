"""The job entry points' argument handling and the workflow's input resolution (no Ray run)."""

from __future__ import annotations

import pytest

from lavic_ray import workflow
from lavic_ray.config import load_config
from lavic_ray.jobs import main


@pytest.mark.parametrize("argv, message", [
    (["--config", "jobs/configs/distill_small.yaml", "stage1.lrr=1"], "stage1.lrr: unknown key"),
    (["--config", "jobs/configs/nope.yaml"], "config file not found"),
    (["--config", "jobs/configs/recommend_small.yaml", "job.variant=lavic-everything"], "job.variant"),
])
def test_bad_presets_and_overrides_exit_2_naming_the_problem(argv, message, capsys):
    assert main("distill", argv) == 2
    assert message in capsys.readouterr().err


def test_a_job_needs_its_inputs_and_says_which_job_makes_them(tmp_path, capsys):
    argv = ["--config", "jobs/configs/distill_small.yaml", f"storage_root={tmp_path}"]
    assert main("distill", argv) == 2
    assert "run the pipeline job first" in capsys.readouterr().err


def test_variants_read_their_own_tables(tmp_path, synth_root, tiny_dir):
    cfg, art = workflow.resolve(load_config(None, [f"storage_root={tmp_path}", f"dataset.root={synth_root}",
                                                   f"model.checkpoint={tiny_dir}"]))
    assert workflow.variant(cfg, art, "lavic")[1] == art.table("distilled")
    assert workflow.variant(cfg, art, "lavic-no-distill")[1] == art.table("undistilled")
    title_only, table = workflow.variant(cfg, art, "lavic-title-only")
    assert table is None and not title_only.stage2.use_images
    with pytest.raises(ValueError, match="unknown stage-2 variant"):
        workflow.variant(cfg, art, "lavic-xl")
    with pytest.raises(FileNotFoundError, match="jobs/distill.py"):
        workflow.embed(cfg, art, "distilled")
    assert art.root.is_absolute()


def test_jobs_take_set_overrides_like_lavic(tmp_path, capsys):
    argv = ["--config", "jobs/configs/distill_small.yaml", "--set", f"storage_root={tmp_path}", "--set", "stage1.lrr=1"]
    assert main("distill", argv) == 2
    assert "stage1.lrr: unknown key" in capsys.readouterr().err


def test_stage2_variants_train_in_waves_and_a_smaller_last_wave_gets_the_idle_cpus(tmp_path, monkeypatch, caplog):
    """The quickstart preset on 2 CPUs with the three variants: the two with vectors side by side (one CPU each),
    then title-only alone on both (``stage2.elastic_threads``); every run of a wave is started before any ends."""
    import threading

    import ray

    from lavic_ray.artifacts import Artifacts
    from lavic_ray.config import LavicRun
    from lavic_ray.quickstart import quickstart_config

    cfg = quickstart_config(None, [f"storage_root={tmp_path}", "job.variants=[lavic,lavic-title-only,lavic-no-distill]"])
    assert cfg.job.concurrent_runs == 2 and cfg.stage2.cpus_per_worker == 1 and cfg.stage2.elastic_threads
    started, order = threading.Barrier(2, timeout=30), []

    def fake_stage2(c, art, name, *a, **k):
        order.append((name, c.stage2.cpus_per_worker))
        if name != "lavic-title-only":
            started.wait()  # both runs of the first wave are in flight together
        return LavicRun(stage2_dir=str(art.stage2(name)))

    monkeypatch.setattr(workflow, "stage2", fake_stage2)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with caplog.at_level("INFO", logger="lavic_ray.workflow"):
        runs = workflow.stage2_variants(cfg, Artifacts(tmp_path), tuple(cfg.job.variants))
    assert list(runs) == ["lavic", "lavic-title-only", "lavic-no-distill"]
    assert sorted(order[:2]) == [("lavic", 1.0), ("lavic-no-distill", 1.0)] and order[2] == ("lavic-title-only", 2.0)
    assert "stage 2: 3 variants, 2 at a time: lavic + lavic-no-distill then lavic-title-only" in caplog.text
