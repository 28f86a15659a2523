"""The quickstart's (and the pipeline job's) report: ``report/report.md``, its training curves and ``results.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lavic_ray.artifacts import atomic_write_text, write_config
from lavic_ray.diagnosis import blind_text, carried_text, words_text, word_order
from lavic_ray.eval.evaluate import format_table
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)


def plot_curves(histories: dict[str, list[dict]], path: Path) -> bool:
    """The training curves as a PNG; False (and no file) without matplotlib (the ``plots`` extra)."""
    try:
        import matplotlib
    except ImportError:
        log.warning("no training-curve plot: matplotlib is not installed (pip install 'lavic-ray[plots]')")
        return False

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
    return True


def word_probe_lines(probe: dict) -> list[str]:
    w = probe["words"]
    order = word_order(w)

    def share(c: list[int] | None) -> str:
        return f"{c[1] / max(c[0], 1):.2f} / {c[3] / max(c[2], 1):.2f}" if c else "-"

    text = words_text(probe)
    return [
        "## Stage 1: is the image in the 5 vectors?", "",
        (f"This dataset has no attribute truth (a synthetic catalog's `synth_truth.json`), so its descriptions' words "
         f"are probed instead (run when stage 2 of `lavic` did not learn): {w['items']} items spread over the catalog, each "
         "described greedily from all its image tokens (the teacher, with the `describe` prompt) and from its title + "
         "5 vectors after stage 1. Per word that sets descriptions apart (in 3 or more of them and at most half) and "
         "that 3 or more of the training conversations use: the items whose description has it, and the share of "
         "those / of the rest whose generated description names it. A word counts as named when the first share is "
         "at least 0.5 above the second."), "",
        "| word | items with it | teacher: with / without | after stage 1: with / without |", "|---|---|---|---|",
        *[f"| {x} | {w['teacher'][x][0]} | {share(w['teacher'][x])} | {share(w['after'].get(x))} |" for x in order[:40]],
        *([f"({len(order) - 40} rarer words not shown; all in `probe.json`)"] if len(order) > 40 else []), "",
        "Examples:", "",
        *[f"- {e['item_id']}: description: {e['description'][:160]} / teacher: {e['teacher'][:160]} / after stage 1: "
          f"{e['after'][:160]}" for e in w["examples"]], "",
        *([f"**{text}**", ""] if text else []),
    ]


def probe_lines(probe: dict) -> list[str]:
    if "after" not in probe:
        return word_probe_lines(probe) if probe.get("words") else []
    attrs = probe["after"].get("attributes", ["colour", "pattern"])
    blind = blind_text(probe)
    return [
        "## Stage 1: is the image in the 5 vectors?", "",
        f"Descriptions generated from the title + 5 vectors of {probe['after']['items']} test-pool items (the teacher's "
        f"row, where shown: from all the image's tokens, with the `describe` prompt); share naming the true "
        f"{' / '.join(attrs)} first:", "",
        "| | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs),
        *[f"| {when} | " + " | ".join(f"{probe[key][f'{a}_accuracy']:.3f}" for a in attrs) + " |"
          for when, key in (("the teacher: all image tokens (probed as stage 2 did not learn)", "teacher"),
                            ("before stage 1", "before"), ("after stage 1", "after")) if key in probe], "",
        "Examples after stage 1:", "",
        *[f"- {e['item_id']} (truth: {e['truth']}): {e['generated'][:200]}" for e in probe["after"]["examples"]], "",
        *([f"**{blind}**", ""] if blind else []),
    ]


def write_report(art, cfg, results, probe, timings, dataset, histories, reused: list[str] = ()) -> None:
    """``report/report.md`` (the table, each variant's verdict, the probe, the targets, the timings), the training
    curves and ``results.json``, published beside the runs under an object-store root."""
    from lavic_ray import storage
    from lavic_ray.model.formulations import make_formulation
    from lavic_ray.model.precision import cpu_summary

    art.report.mkdir(parents=True, exist_ok=True)
    plotted = plot_curves(histories, art.report / "training_curves.png")
    machine = cpu_summary()  # the timings' machine: they are comparable only on one
    catalog = dataset.catalog()
    manifest = json.loads(dataset.manifest.read_text()) if dataset.manifest.is_file() else None
    some = results["random"]
    s2 = cfg.stage2
    head = cfg.eval.headline
    hr = results["lavic"][head] if "lavic" in results else None
    gap = hr - results["lavic-title-only"][head] if hr is not None and "lavic-title-only" in results else None
    variants = [v for v in VARIANTS if v in results]
    stuck = [v for v in variants if results[v].get("learned") is False]
    lines = [
        "# lavic-ray quickstart report", "",
        f"Model: `{cfg.model.checkpoint}`. Dataset: "
        + (f"synthetic catalog ({len(catalog)} items, seed {cfg.synth.seed}); " if manifest else f"`{cfg.dataset.root}` ({len(catalog)} items); ")
        + f"test split `{dataset.split('test')}`: {some['conversations']} conversations, {some['gt_items']} ground-truth items; "
        f"candidates `{cfg.eval.candidates_key}`, ground truth in the list for {some['oracle_hr@10']:.1%} "
        f"(oracle HR@10, the ceiling of any reranker); a random order scores HR@1 {some['chance_hr@1']:.3f} on average.", "",
    ]
    if "lavic" in stuck:
        carried = carried_text(probe)
        lines += ["**Stage 2 of `lavic` did not learn**: its best validation HR@1 is not above chance (see the curves "
                  "below); its test figures are those of an untrained reranker." + (f" {carried}" if carried else ""), ""]
    ablations = [v for v in stuck if v != "lavic"]
    if ablations:
        lines += ["Stayed at chance: " + ", ".join(f"`{v}`" for v in ablations) + " - an ablation without what decides "
                  "on this dataset does.", ""]
    lines += [
        f"LaViC rows: stage 2 **{make_formulation(s2).describe()}**"
        f", {s2.epochs} epoch(s), lr {s2.lr}, LoRA r {s2.lora.r}; scores are likelihoods, so ValidRatio is 1 by construction.", "",
        format_table(results), "",
        "Ties count against the ground truth."
        + (f" The decisive attributes ({', '.join(manifest['decisive_attributes'])}) are only in the images."
           if manifest and manifest.get("decisive_attributes") else ""), "",
        "## Stage 2: did each variant learn?", "",
        "| variant | learned | best validation HR@1 (step) | chance | validation HR@1 by step |", "|---|---|---|---|---|",
        *[verdict_row(v, results[v]) for v in variants], "",
        *(probe_lines(probe) if probe else []),
        *(target_lines(hr, gap, head, timings, reused) if gap is not None else []),
        "![training curves](training_curves.png)" if plotted else "(no training-curve plot: matplotlib is not installed)", "",
        "## Timings (s)", "", f"On {machine}.", "", "| step | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in timings.items()], "",
    ]
    atomic_write_text(art.report / "report.md", "\n".join(lines) + "\n")
    write_config(art.report, cfg)
    (art.report / "results.json").write_text(json.dumps({"methods": results, "probe": probe, "timings": timings,
                                                         "machine": machine}, indent=1))
    storage.publish(art.report)
    storage.publish(art.probe)


def target_lines(hr: float, gap: float, head: str, timings: dict, reused: list[str] = ()) -> list[str]:
    """The quickstart's targets; the wall time is judged only for a run that trained both stages itself."""
    minutes = timings["total"] / 60
    if reused:
        met = hr >= 0.6 and gap >= 0.25
        when = (f"total {minutes:.1f} min, not judged against the 30-min target: this run took "
                f"{', '.join(reused)} from an earlier one")
    else:
        met = hr >= 0.6 and gap >= 0.25 and timings["total"] <= 1800
        when = f"total {minutes:.1f} min (target <= 30)"
    return ["## Targets", "",
            f"LaViC {head} {hr:.4f} (target >= 0.6), {gap:+.4f} over title-only (target >= +0.25), {when}: "
            f"**{'met' if met else 'NOT met'}**.", ""]


def verdict_row(name: str, m: dict) -> str:
    learned = {True: "yes", False: "**no**", None: "unknown (no validation)"}[m.get("learned")]
    curve = ", ".join(f"{s}: {h:.2f}" for s, h in m.get("valid_curve", []))
    best = f"{m['best_valid_hr@1']:.3f} ({m['best_step']})" if "best_valid_hr@1" in m else "-"
    chance = f"{m['valid_chance_hr@1']:.3f}" if "valid_chance_hr@1" in m else "-"
    return f"| {name} | {learned} | {best} | {chance} | {curve} |"
