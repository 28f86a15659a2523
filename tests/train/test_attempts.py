"""stage2.attempts: a stage-2 run still at chance is set aside and the next attempt starts with the next seed."""

import json
import logging

import yaml

from lavic_ray import workflow
from lavic_ray.config import load_config
from lavic_ray.train.loop import TrainState, _should_stop
from lavic_ray.train.stage2 import Stage2Task


def test_a_run_at_chance_stops_before_patience_or_the_time_cap():
    cfg = load_config(None, ["stage2.patience=2", "stage2.max_minutes=5"]).stage2
    assert _should_stop(cfg, TrainState(step=120), 1.0, at_chance=True) == "chance"
    assert _should_stop(cfg, TrainState(step=120), 1.0) is None
    assert _should_stop(cfg, TrainState(step=120, since_improved=2), 1.0) == "patience"
    assert _should_stop(cfg, TrainState(step=120), 6.0) == "time"


def test_stage2_checks_for_chance_only_from_its_own_check_step():
    # the rule is the task's: stage2.chance_check_step (None: never), then the report's "did not learn" test
    def val(step, hr):
        return {"step": step, "valid_hr@1": hr, "valid_chance_hr@1": 0.1, "valid_conversations": 60}

    flat, climbed = [val(30, 0.1), val(60, 0.1)], [val(30, 0.1), val(60, 0.5)]

    def task(check):
        sets = ["stage2.attempts=2", f"stage2.chance_check_step={check}"] if check else []
        return type("T", (), {"scfg": load_config(None, sets).stage2})()

    at_chance = Stage2Task.at_chance
    assert at_chance(task(60), 60, flat) is True
    assert at_chance(task(60), 59, flat) is False       # before the check step
    assert at_chance(task(60), 60, climbed) is False    # it learned
    assert at_chance(task(None), 600, flat) is False    # no check step: never


def test_an_attempt_at_chance_is_set_aside_and_the_next_seed_runs(tmp_path, tiny_dir, synth_root, caplog):
    # one validation conversation: a single hit is never above chance at 5%, so every validation reads "at chance"
    # (the report's own test), and attempt 1 stops at its first validation past chance_check_step
    cfg, art = workflow.resolve(load_config(None, [
        f"storage_root={tmp_path}", f"dataset.root={synth_root}", f"model.checkpoint={tiny_dir}",
        "stage2.engine.kind=torch", "stage2.formulation=pointwise", "stage2.negatives=2", "stage2.max_steps=4",
        "stage2.eval_every=1", "stage2.eval_limit=1", "stage2.max_length=192", "stage2.engine.micro_batch_size=2",
        "stage2.seed=5", "stage2.attempts=2", "stage2.chance_check_step=2"]))
    out = tmp_path / "s2" / "lavic-title-only"
    caplog.set_level(logging.INFO, logger="lavic_ray.console")
    run = workflow.stage2(cfg, art, "lavic-title-only", out=out, use_ray=False)
    assert run.stage2_dir == str(out)
    first = workflow.attempt_dir(out, 1)
    h1 = json.loads((first / "history.json").read_text())
    assert max(h["step"] for h in h1) == 2  # stopped at the check, not at its step cap
    seeds = [yaml.safe_load((d / "config.yaml").read_text())["stage2"] for d in (first, out)]
    assert [(s["seed"], s["attempts"], s["chance_check_step"]) for s in seeds] == [(5, 2, 2), (6, 1, None)]
    for d in (first, out):  # each attempt's config loads again, as a Ray Train worker re-validates it
        load_config(d / "config.yaml")
    h2 = json.loads((out / "history.json").read_text())
    assert max(h["step"] for h in h2) == 4  # the last attempt runs to its own end whatever it reaches
    rows = json.loads((out / workflow.ATTEMPTS_FILE).read_text())
    assert [(r["attempt"], r["seed"], r["dir"], r["learned"], r["steps"]) for r in rows] == [
        (1, 5, "lavic-title-only.attempt1", False, 2), (2, 6, "lavic-title-only", False, 4)]
    assert "attempt 2 starts with seed 6" in caplog.text
    # done: run again, nothing trains and nothing moves
    workflow.stage2(cfg, art, "lavic-title-only", out=out, use_ray=False)
    assert json.loads((out / workflow.ATTEMPTS_FILE).read_text()) == rows
    assert not workflow.attempt_dir(out, 2).exists()


def test_attempts_need_a_check_step_and_the_report_lists_every_attempt():
    import pytest

    from lavic_ray.quickstart import _attempt_lines

    with pytest.raises(ValueError, match="chance_check_step"):
        load_config(None, ["stage2.attempts=2"])
    s2 = load_config(None, ["stage2.attempts=2", "stage2.chance_check_step=120"]).stage2
    once = {"lavic": {"attempts": [{"attempt": 1, "seed": 0, "dir": "lavic", "learned": True, "steps": 150,
                                    "valid_curve": [[30, 0.1], [60, 0.5]]}]}}
    assert _attempt_lines(once, ["lavic"], s2) == []  # the first attempt learned: nothing to say
    twice = {"lavic": {"attempts": [
        {"attempt": 1, "seed": 2, "dir": "lavic.attempt1", "learned": False, "steps": 120, "valid_curve": [[120, 0.1]]},
        {"attempt": 2, "seed": 3, "dir": "lavic", "learned": True, "steps": 180, "valid_curve": [[120, 0.55]]}]}}
    text = "\n".join(_attempt_lines(twice, ["lavic"], s2))
    assert "| lavic | 1 | 2 | no | 120 | 120: 0.10 |" in text and "| lavic | 2 | 3 | yes | 180 | 120: 0.55 |" in text
    assert "still at chance at step 120" in text
