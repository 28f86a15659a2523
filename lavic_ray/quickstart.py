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

from lavic_ray.artifacts import Artifacts, atomic_write_text, write_config
from lavic_ray.config import LavicConfig, LavicRun, config_to_yaml, load_config
from lavic_ray.data.layout import Catalog, read_conversations
from lavic_ray.data.synthetic import MANIFEST_FILE, TRUTH_FILE, generate
from lavic_ray.data.validate import validate_root
from lavic_ray.eval.evaluate import EvalContext, evaluate, format_table

log = logging.getLogger(__name__)

PRESET = "quickstart_small.yaml"
METHODS = ("lavic", "lavic-title-only", "lavic-no-distill", "sbert", "bm25", "random", "first-candidate")


def quickstart_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LavicConfig:
    """The packaged preset, then an optional user file, then dotted overrides."""
    preset = Path(str(resources.files("lavic_ray.presets").joinpath(PRESET)))
    return load_config([preset, *([path] if path else [])], overrides)


def ensure_synthetic_catalog(cfg: LavicConfig, directory: Path) -> Path:
    """Synthesise the catalog into ``directory`` unless the same config already did."""
    wanted = config_to_yaml(cfg.synth)
    previous = directory / "config.yaml"
    if (directory / MANIFEST_FILE).is_file() and previous.is_file() and previous.read_text() == wanted:
        log.info("reusing the synthetic catalog in %s", directory)
        return directory
    log.info("synthesising the catalog into %s", directory)
    generate(cfg.synth, directory, force=True)
    return directory


def ensure_model(cfg: LavicConfig, art: Artifacts, catalog: Path) -> str:
    """Resolve ``small`` / ``tiny`` to a built checkpoint under the work directory."""
    name = cfg.model.checkpoint
    if name not in ("small", "tiny"):
        return name
    out = art.root / "models" / name
    if (out / "config.json").is_file():
        log.info("reusing the %s model in %s", name, out)
        return str(out)
    log.info("building the %s model into %s", name, out)
    if name == "tiny":
        from lavic_ray.model.checkpoints import build_tiny

        build_tiny(out, seed=cfg.stage1.seed)
    else:
        from lavic_ray.model.small import build_small_model

        build_small_model(catalog, out, seed=cfg.stage1.seed)
    return str(out)


def _done(stage_dir: Path) -> bool:
    return (stage_dir / "adapter" / "adapter_config.json").is_file() and (stage_dir / "history.json").is_file()


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


def run_quickstart(cfg: LavicConfig, workdir: str | Path, echo: bool = True) -> dict[str, dict]:
    """Run the quickstart; return ``{method: metrics}`` on the synthetic test split."""
    import ray

    from lavic_ray.eval.probe import probe_descriptions
    from lavic_ray.pipeline.embed import run_embed
    from lavic_ray.train.run import run_ray

    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.monotonic()
        out = fn(*a, **k)
        timings[name] = round(time.monotonic() - t, 1)
        log.info("quickstart: %s took %.0f s", name, timings[name])
        return out

    art = Artifacts(workdir)
    root = timed("synthetic catalog", ensure_synthetic_catalog, cfg, art.catalog)
    report = validate_root(root)
    if not report.ok:
        raise ValueError("the synthetic catalog failed validation:\n" + report.render(20))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": timed("model", ensure_model, cfg, art, root)}),
                                 "dataset": cfg.dataset.model_copy(update={"root": str(root), "domain": cfg.synth.domain})})
    write_config(art.root, cfg)
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True)

    truth = json.loads((root / TRUTH_FILE).read_text())["items"]
    probe_items = sorted(i for i, t in truth.items() if t["pool"] == "test")[:40]
    stage1_dir = art.root / "stage1"
    probe_file = art.root / "probe.json"
    probe = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    if "before" not in probe:
        probe["before"] = timed("probe before stage 1", probe_descriptions, cfg.model.checkpoint, root, probe_items)
    if not _done(stage1_dir):
        timed("stage 1", run_ray, "stage1", cfg, root, stage1_dir)
        probe.pop("after", None)
    if "after" not in probe:
        probe["after"] = timed("probe after stage 1", probe_descriptions, cfg.model.checkpoint, root, probe_items, stage1_dir / "adapter")
    atomic_write_text(probe_file, json.dumps(probe, indent=1))

    tables = {"distilled": art.root / "items" / "distilled.parquet", "base": art.root / "items" / "undistilled.parquet"}
    if not tables["distilled"].is_file():
        timed("embed (distilled)", run_embed, cfg, root, tables["distilled"], stage1_dir / "adapter")
    if not tables["base"].is_file():
        timed("embed (undistilled)", run_embed, cfg, root, tables["base"], None)

    variants = {
        "lavic": (cfg, tables["distilled"]),
        "lavic-title-only": (cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"use_images": False})}), None),
        "lavic-no-distill": (cfg, tables["base"]),
    }
    runs = {}
    for name, (vcfg, table) in variants.items():
        d = art.root / "stage2" / name
        if not _done(d):
            timed(f"stage 2 ({name})", run_ray, "stage2", vcfg, root, d, table)
        runs[name] = LavicRun(stage2_dir=str(d), table=str(table) if table else None)

    ecfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"runs": runs})})
    catalog = Catalog.load(root)
    test_file = root / cfg.synth.domain / "test.jsonl"
    convs = read_conversations(test_file)
    ctx = EvalContext(ecfg, catalog)
    results: dict[str, dict] = {}
    for method in METHODS:
        results[method] = timed(f"evaluate {method}", evaluate, convs, method, ecfg.eval.candidates_key, ctx, art.eval_dir(method))

    histories = {"stage1": json.loads((stage1_dir / "history.json").read_text())}
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


def _write_report(art, cfg, results, probe, timings, catalog, test_file, histories) -> None:
    some = results["random"]
    s2 = cfg.stage2
    hr = results["lavic"]["hr@1"]
    gap = hr - results["lavic-title-only"]["hr@1"]
    target = "met" if hr >= 0.6 and gap >= 0.25 and timings["total"] < 1800 else "NOT met"
    lines = [
        "# lavic-ray quickstart report", "",
        f"Model: `{cfg.model.checkpoint}`. Dataset: synthetic catalog ({len(catalog)} items, seed {cfg.synth.seed}); "
        f"test split `{test_file}`: {some['conversations']} conversations, {some['gt_items']} ground-truth items; "
        f"candidates `{cfg.eval.candidates_key}` (SBERT over titles), ground truth in the list for {some['oracle_hr@10']:.1%} "
        "(oracle HR@10, the ceiling of any reranker).", "",
        f"LaViC rows: stage 2 **{s2.formulation}** formulation"
        + (f" (answer = {s2.answer}, layout = {s2.layout})" if s2.formulation == "listwise" else f" (1 positive : {s2.negatives} negatives; rank by log P(yes) - log P(no))")
        + f", {s2.epochs} epoch(s), lr {s2.lr}, LoRA r {s2.lora.r}; scores are likelihoods, so ValidRatio is 1 by construction.", "",
        format_table(results), "",
        "Ties count against the ground truth. The decisive attributes (colour, pattern) are only in the images.", "",
        "## Stage 1: is the image in the 5 vectors?", "",
        "Descriptions generated from the title + 5 vectors of 40 test-pool items; share naming the true colour / pattern first:", "",
        "| | colour | pattern |", "|---|---|---|",
        f"| before stage 1 | {probe['before']['colour_accuracy']:.3f} | {probe['before']['pattern_accuracy']:.3f} |",
        f"| after stage 1 | {probe['after']['colour_accuracy']:.3f} | {probe['after']['pattern_accuracy']:.3f} |", "",
        "Examples after stage 1:", "",
        *[f"- {e['item_id']} (truth: {e['truth']}): {e['generated'][:200]}" for e in probe["after"]["examples"]], "",
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
