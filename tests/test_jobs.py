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
