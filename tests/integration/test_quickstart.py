"""The README's main job, end to end on a local Ray, with the tiny model and a small catalog."""

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

KEYS = {"conversations", "hr@1", "hr@1_per_gt_item", "ndcg@10", "valid_ratio", "oracle_hr@10"}


def test_quickstart_runs_every_stage_and_prints_json_last(tmp_path):
    workdir = tmp_path / "runs" / "qs"
    # a relative work directory, as in the README: Ray workers run elsewhere and must get absolute paths
    cmd = [sys.executable, "-m", "lavic_ray.cli", "quickstart", "--workdir", "runs/qs", "--json",
           "--set", "model.checkpoint=tiny", "--set", "synth.items=96", "--set", "synth.conversations=60",
           "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=2", "--set", "stage1.engine.kind=torch",
           "--set", "stage2.engine.kind=torch"]  # the preset's variants: lavic, lavic-title-only
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # the console: a line per step with its time; the rest (Ray's and our log lines) in the run's log file
    assert "[1/7] dataset" in proc.stderr and "[5/7] stage 2: lavic, lavic-title-only: done in" in proc.stderr
    logs = sorted((workdir / "logs").glob("quickstart-*.log"), key=lambda p: p.stat().st_mtime)
    log = logs[-1].read_text()
    assert proc.stderr.startswith("full log: ") and logs[-1].name in proc.stderr.splitlines()[0]
    # a short console for a person: no line over 160 characters, no carriage-return frames off a terminal
    console_lines = proc.stderr.splitlines()
    assert len(console_lines) <= 60 and max(map(len, console_lines)) <= 160 and "\r" not in proc.stderr, console_lines
    # Ray Train's state queries work (the dashboard is on): none of the once-a-second failures
    assert "Failed to query Ray Train Controller" not in log + proc.stderr
    assert "stage2 step 2/2" in log  # a Ray Train worker's own log line reached the file
    assert {"lavic", "lavic-title-only", "sbert", "bm25", "random", "first-candidate"} <= set(results)
    for m in results.values():
        assert KEYS <= set(m)
    assert results["lavic"]["valid_ratio"] == 1.0
    # every variant says whether stage 2 learned; a run at chance is said plainly on the console and in the report
    assert all(isinstance(results[v]["learned"], bool) and results[v]["valid_curve"] for v in ("lavic", "lavic-title-only"))
    stuck = [v for v in ("lavic", "lavic-title-only") if results[v]["learned"] is False]
    for v in stuck:
        assert (f"WARNING: stage 2 of {v} did not learn" if v == "lavic" else f"the ablation {v} stayed at chance") in proc.stderr
    report_md = (workdir / "report" / "report.md").read_text()
    assert ("**Stage 2 of `lavic` did not learn**" in report_md) == ("lavic" in stuck)
    # where it did not learn, the teacher (all image tokens) is probed too, on the stage-1 probe's items
    probe = json.loads((workdir / "probe.json").read_text())
    assert ("teacher" in probe) == ("lavic" in stuck) == ("| the teacher: all image tokens" in report_md)
    if "teacher" in probe:
        assert probe["teacher"]["items"] == probe["after"]["items"] and "colour_chance" in probe["teacher"]
    # the preset's 1 CPU per run: both variants side by side (the waves of three: tests/test_jobs.py)
    assert "stage 2: 2 variants, 2 at a time: lavic + lavic-title-only" in log
    report = (workdir / "report" / "report.md").read_text()
    assert "| lavic |" in report and "before stage 1" in report and "pointwise" in report
    assert (workdir / "report" / "training_curves.png").stat().st_size > 1000
    for d in ("stage1", "stage2/lavic", "stage2/lavic-title-only"):
        assert (workdir / d / "adapter" / "adapter_config.json").is_file(), d
        assert (workdir / d / "config.yaml").is_file()


def test_quickstart_on_a_dataset_without_attribute_truth_probes_its_words_when_lavic_did_not_learn(tmp_path, synth_root, tiny_dir,
                                                                                                   local_ray):
    """In this process, on the integration tier's Ray (the command's console and JSON contract is the test above's);
    then a rerun, which finds every artifact in place: it trains and probes nothing again, and only re-evaluates."""
    import io

    from lavic_ray.console import Console
    from lavic_ray.quickstart import quickstart_config, run_quickstart

    # a user's catalog in the LaViC layout: no synth_truth.json, no synth_manifest.json
    root = tmp_path / "catalog"
    shutil.copytree(synth_root, root)
    (root / "synth_truth.json").unlink()
    (root / "synth_manifest.json").unlink()
    workdir = tmp_path / "qs"
    cfg = quickstart_config(None, [f"storage_root={workdir}", f"model.checkpoint={tiny_dir}", f"dataset.root={root}",
                                   "dataset.domain=synthetic", "stage1.max_steps=2", "stage2.max_steps=2",
                                   "stage1.engine.kind=torch", "stage2.engine.kind=torch", "job.variants=[lavic]"])
    err = io.StringIO()
    results = run_quickstart(cfg, Console(err=err))
    report = (workdir / "report" / "report.md").read_text()
    assert "before stage 1" not in report and "decisive attributes" not in report  # nothing assumes the synthetic catalog
    probe = json.loads((workdir / "probe.json").read_text()) if (workdir / "probe.json").is_file() else {}
    stuck = results["lavic"]["learned"] is False
    assert ("words" in probe) == stuck == ("| word | items with it |" in report)
    if stuck:  # the tiny random model, 2 steps: the usual case
        words = probe["words"]
        assert words["items"] == 48 and words["teacher"] and set(words["after"]) == set(words["teacher"])
        assert "the model names" in " ".join(err.getvalue().split()) and "Of the " in report  # the console wraps at 158

    from lavic_ray import diagnosis, workflow
    from lavic_ray.pipeline import embed

    def again(*a, **k):
        raise AssertionError("a rerun repeated work an earlier run finished")

    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((workflow, "run_stage"), (embed, "run_embed"), (diagnosis, "probe_words"),
                             (diagnosis, "probe_teacher")):
            mp.setattr(module, name, again)
        assert run_quickstart(cfg, Console(err=io.StringIO())) == results
