"""`lavic quickstart`: the main job on the embedded default, end to end, on a local Ray.

synthetic catalog -> small model (vision side trained on the catalog) -> stage 1
(Ray Train + DeepSpeed) -> item embedding tables (Ray Data; distilled and
undistilled) -> stage 2 x3 (LaViC, title-only, no-distill) -> evaluation of every
method on the synthetic test split -> markdown report with training curves.

Every step writes its artifacts under the work directory beside its config and
is skipped on a rerun when its output is already there, so an interrupted
quickstart picks up where it stopped (Ray Train also resumes a half-done stage).
"""

from __future__ import annotations

import json
import logging
import os
import time
from importlib import resources
from pathlib import Path

from lavic_ray import workflow
from lavic_ray.artifacts import Artifacts, atomic_write_text, write_config
from lavic_ray.config import LavicConfig, load_config
from lavic_ray.data.layout import Catalog
from lavic_ray.data.synthetic import TRUTH_FILE
from lavic_ray.data.validate import validate_root
from lavic_ray.eval.evaluate import format_table

log = logging.getLogger(__name__)

PRESET = "quickstart_small.yaml"
METHODS = ("lavic", "lavic-title-only", "lavic-no-distill", "sbert", "bm25", "random", "first-candidate")


def quickstart_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LavicConfig:
    """The packaged preset, then an optional user file, then dotted overrides."""
    preset = Path(str(resources.files("lavic_ray.presets").joinpath(PRESET)))
    return load_config([preset, *([path] if path else [])], overrides)


def _plot(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        tr = [(h["step"], h["train_loss"]) for h in hist if "train_loss" in h]
        if tr:
            axes[0].plot(*zip(*tr), label=name)
        va = [(h["step"], h.get("valid_hr@1", h.get("valid_ppl"))) for h in hist if "valid_hr@1" in h or "valid_ppl" in h]
        if va and name != "stage1":
            axes[1].plot(*zip(*va), marker="o", label=name)
    axes[0].set(title="training loss", xlabel="optimizer step", ylabel="loss")
    axes[1].set(title="stage 2 validation HR@1", xlabel="optimizer step", ylabel="HR@1")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _probe(cfg: LavicConfig, art: Artifacts, timed) -> dict:
    """Stage 1 between two probes of colour/pattern words generated from the 5 vectors (synthetic data only)."""
    from lavic_ray.eval.probe import probe_descriptions

    truth_file = Path(cfg.dataset.root) / TRUTH_FILE
    probe_file = art.root / "probe.json"
    probe = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    if not truth_file.is_file():  # a real dataset: no attribute truth to probe against
        if not workflow.stage_done(art.stage1):
            timed("stage 1", workflow.stage1, cfg, art)
        return {}
    truth = json.loads(truth_file.read_text())["items"]
    items = sorted(i for i, t in truth.items() if t["pool"] == "test")[:40]
    if "before" not in probe:
        probe["before"] = timed("probe before stage 1", probe_descriptions, cfg.model.checkpoint, cfg.dataset.root, items)
        atomic_write_text(probe_file, json.dumps(probe, indent=1))  # kept if stage 1 is interrupted
    if not workflow.stage_done(art.stage1):
        timed("stage 1", workflow.stage1, cfg, art)
        probe.pop("after", None)
    if "after" not in probe:
        probe["after"] = timed("probe after stage 1", probe_descriptions, cfg.model.checkpoint, cfg.dataset.root, items,
                               art.stage1 / "adapter")
    atomic_write_text(probe_file, json.dumps(probe, indent=1))
    return probe


def run_quickstart(cfg: LavicConfig, workdir: str | Path, echo: bool = True) -> dict[str, dict]:
    """Run every step into ``workdir``; return ``{method: metrics}`` on the test split.

    The dataset is ``dataset.root`` when set (the pipeline job on a user's data), else
    the synthetic catalog, made under ``workdir``.
    """
    import ray

    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.monotonic()
        out = fn(*a, **k)
        timings[name] = round(time.monotonic() - t, 1)
        log.info("quickstart: %s took %.0f s", name, timings[name])
        return out

    cfg = cfg.model_copy(update={"storage_root": str(workdir)})
    art = Artifacts(workdir)
    timed("synthetic catalog", workflow.dataset_root, cfg, art, create=True)
    cfg, art = timed("model", workflow.resolve, cfg, build=True)
    root = Path(cfg.dataset.root)
    report = validate_root(root)
    if not report.ok:
        raise ValueError(f"the dataset {root} failed validation:\n" + report.render(20))
    write_config(art.root, cfg)
    if not ray.is_initialized():
        # always its own local Ray: never join a cluster someone else started on this machine
        # (ray.init() would attach to a running `ray start --head` and then refuse num_cpus)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True)

    probe = _probe(cfg, art, timed)
    for which in ("distilled", "undistilled"):
        if not art.table(which).is_file():
            timed(f"embed ({which})", workflow.embed, cfg, art, which)
    runs = timed("stage 2 (every variant)", workflow.stage2_variants, cfg, art, tuple(workflow.VARIANTS), timed)
    results = workflow.evaluate_methods(cfg, art, METHODS, runs, "test", timed)
    catalog = Catalog.load(root)
    test_file = root / cfg.dataset.domain / "test.jsonl"

    histories = {"stage1": json.loads((art.stage1 / "history.json").read_text())}
    for name, r in runs.items():
        histories[f"stage2 {name}"] = json.loads((Path(r.stage2_dir) / "history.json").read_text())
    art.report.mkdir(parents=True, exist_ok=True)
    _plot(histories, art.report / "training_curves.png")
    timings["total"] = round(time.monotonic() - t_start, 1)
    _write_report(art, cfg, results, probe, timings, catalog, test_file, histories)
    if echo:
        print(format_table(results))
        print(f"report: {art.report / 'report.md'}")
    return results


def _probe_lines(probe: dict) -> list[str]:
    return [
        "## Stage 1: is the image in the 5 vectors?", "",
        "Descriptions generated from the title + 5 vectors of 40 test-pool items; share naming the true colour / pattern first:", "",
        "| | colour | pattern |", "|---|---|---|",
        f"| before stage 1 | {probe['before']['colour_accuracy']:.3f} | {probe['before']['pattern_accuracy']:.3f} |",
        f"| after stage 1 | {probe['after']['colour_accuracy']:.3f} | {probe['after']['pattern_accuracy']:.3f} |", "",
        "Examples after stage 1:", "",
        *[f"- {e['item_id']} (truth: {e['truth']}): {e['generated'][:200]}" for e in probe["after"]["examples"]], "",
    ]


def _write_report(art, cfg, results, probe, timings, catalog, test_file, histories) -> None:
    some = results["random"]
    s2 = cfg.stage2
    hr = results["lavic"]["hr@1"]
    gap = hr - results["lavic-title-only"]["hr@1"]
    target = "met" if hr >= 0.6 and gap >= 0.25 and timings["total"] < 1800 else "NOT met"
    lines = [
        "# lavic-ray quickstart report", "",
        f"Model: `{cfg.model.checkpoint}`. Dataset: "
        + (f"synthetic catalog ({len(catalog)} items, seed {cfg.synth.seed}); " if probe else f"`{cfg.dataset.root}` ({len(catalog)} items); ")
        + 
        f"test split `{test_file}`: {some['conversations']} conversations, {some['gt_items']} ground-truth items; "
        f"candidates `{cfg.eval.candidates_key}` (SBERT over titles), ground truth in the list for {some['oracle_hr@10']:.1%} "
        "(oracle HR@10, the ceiling of any reranker).", "",
        f"LaViC rows: stage 2 **{s2.formulation}** formulation"
        + (f" (answer = {s2.answer}, layout = {s2.layout})" if s2.formulation == "listwise" else f" (1 positive : {s2.negatives} negatives; rank by log P(yes) - log P(no))")
        + f", {s2.epochs} epoch(s), lr {s2.lr}, LoRA r {s2.lora.r}; scores are likelihoods, so ValidRatio is 1 by construction.", "",
        format_table(results), "",
        "Ties count against the ground truth. The decisive attributes (colour, pattern) are only in the images.", "",
        *(_probe_lines(probe) if probe else []),
        "## Targets", "",
        f"LaViC HR@1 {hr:.4f} (target >= 0.6), {gap:+.4f} over title-only (target >= +0.25), total {timings['total'] / 60:.1f} min "
        f"(target < 30): **{target}**.", "",
        "![training curves](training_curves.png)", "",
        "## Timings (s)", "", "| step | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in timings.items()], "",
        "Final stage-2 validation: " + ", ".join(
            f"{k}: HR@1 {next((h['valid_hr@1'] for h in reversed(v) if 'valid_hr@1' in h), float('nan')):.3f}"
            for k, v in histories.items() if k != "stage1"),
    ]
    atomic_write_text(art.report / "report.md", "\n".join(lines) + "\n")
    write_config(art.report, cfg)
    (art.report / "results.json").write_text(json.dumps({"methods": results, "probe": probe, "timings": timings}, indent=1))
