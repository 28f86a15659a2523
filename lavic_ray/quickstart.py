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

import functools
import json
import logging
import time
from importlib import resources
from pathlib import Path

from lavic_ray import workflow
from lavic_ray import storage
from lavic_ray.artifacts import Artifacts, atomic_write_text, write_config
from lavic_ray.config import LavicConfig, load_config
from lavic_ray.console import Console
from lavic_ray.data.validate import validate_root
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.evaluate import format_table
from lavic_ray.eval.methods import BASELINES
from lavic_ray.runtime import remote_call
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)

PRESET = "quickstart_small.yaml"
#: The baselines every quickstart report compares against.
REFERENCE_METHODS = ("sbert", "bm25", "random", "first-candidate")
assert set(REFERENCE_METHODS) <= set(BASELINES)


def methods_of(cfg: LavicConfig) -> list[str]:
    """What the quickstart evaluates: the trained variants (``job.variants``), any other LaViC method
    ``eval.methods`` names (``lavic-generate``), and the baselines."""
    from lavic_ray.eval.lavic_methods import LAVIC_METHODS

    extra = [m for m in cfg.eval.methods if m in LAVIC_METHODS and m not in VARIANTS]
    return list(dict.fromkeys([*cfg.job.variants, *extra, *REFERENCE_METHODS]))


def quickstart_config(path: str | Path | list | None = None, overrides: list[str] | None = None) -> LavicConfig:
    """The packaged preset, then optional user file(s), then dotted overrides."""
    preset = Path(str(resources.files("lavic_ray.presets").joinpath(PRESET)))
    paths = [] if path is None else ([path] if isinstance(path, (str, Path)) else list(path))
    return load_config([preset, *paths], overrides)


def _plot(histories: dict[str, list[dict]], path: Path) -> bool:
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


def _probe(cfg: LavicConfig, art: Artifacts, timed) -> dict:
    """Stage 1 between two probes of the decisive attributes' words in descriptions generated from the 5 vectors
    (synthetic data only)."""
    from lavic_ray.eval.probe import probe_descriptions

    truth = workflow.dataset(cfg).attribute_truth()
    probe = json.loads(art.probe.read_text()) if storage.fetch(art.probe).is_file() else {}
    if truth is None:  # a user's dataset: no attribute truth; its words are probed if stage 2 does not learn
        if not workflow.stage_done(art.stage1):
            timed("stage 1", workflow.stage1, cfg, art)
            probe.pop("words", None)
            atomic_write_text(art.probe, json.dumps(probe, indent=1))
        return probe
    items = _probe_items(truth)
    res = cfg.eval.resources  # the probe loads the model: a Ray task where eval.resources says, not the driver
    run = functools.partial(remote_call, probe_descriptions, num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor)
    if "before" not in probe:
        probe["before"] = timed("probe before stage 1", run, cfg, items)
        atomic_write_text(art.probe, json.dumps(probe, indent=1))  # kept if stage 1 is interrupted
    if not workflow.stage_done(art.stage1):
        timed("stage 1", workflow.stage1, cfg, art)
        probe.pop("after", None)
    if "after" not in probe:
        probe["after"] = timed("probe after stage 1", run, cfg, items, art.stage1 / "adapter")
    atomic_write_text(art.probe, json.dumps(probe, indent=1))
    return probe


def _probe_items(truth: dict) -> list[str]:
    """The items every probe describes: the first 40 of the test pool."""
    return sorted(i for i, t in truth.items() if t["pool"] == "test")[:40]


def _probe_teacher(cfg: LavicConfig, art: Artifacts, probe: dict, timed) -> dict:
    """``probe["teacher"]``: the probe's reading of the full-token model's own descriptions of the same items (run
    when stage 2 of ``lavic`` did not learn, to tell an attribute the model cannot see from one the vectors lost)."""
    from lavic_ray.eval.probe import score_descriptions
    from lavic_ray.pipeline.describe import describe_items

    ds = workflow.dataset(cfg)
    truth = ds.attribute_truth()
    items = _probe_items(truth)
    res = cfg.eval.resources
    texts = timed("probe of the teacher", remote_call, describe_items, cfg, items, num_cpus=res.cpus_per_actor,
                  num_gpus=res.gpus_per_actor)
    probe["teacher"] = score_descriptions(items, texts, truth, ds.attribute_vocabulary())
    atomic_write_text(art.probe, json.dumps(probe, indent=1))
    return probe


def _probe_words(cfg: LavicConfig, art: Artifacts, probe: dict, timed) -> dict:
    """``probe["words"]``, on a dataset without attribute truth (run when stage 2 of ``lavic`` did not learn): which
    of the words that set its descriptions apart the model names from all its image tokens (the teacher) and from
    the 5 vectors after stage 1, on :func:`~lavic_ray.eval.probe.word_probe_items`."""
    from lavic_ray.eval.probe import (
        distinctive_words,
        vector_descriptions,
        word_probe_items,
        word_readout,
    )
    from lavic_ray.pipeline.describe import describe_items

    ds = workflow.dataset(cfg)
    catalog = ds.catalog()
    items = word_probe_items(catalog)
    if not items:
        return probe
    res = cfg.eval.resources
    run = functools.partial(remote_call, num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor)
    teacher = timed("probe of the teacher (words)", run, describe_items, cfg, items)
    after = timed("probe after stage 1 (words)", run, vector_descriptions, cfg, items, art.stage1 / "adapter")
    truth = [catalog[i].primary_image.description for i in items]
    words = distinctive_words([im.description for it in catalog for im in it.images if im.description],
                              [c.context for c in ds.conversations("train", (cfg.eval.candidates_key,))])
    probe["words"] = {"items": len(items), "teacher": word_readout(truth, teacher, words),
                      "after": word_readout(truth, after, words),
                      "examples": [{"item_id": i, "description": t, "teacher": a.strip(), "after": b.strip()}
                                   for i, t, a, b in list(zip(items, truth, teacher, after))[:3]]}
    atomic_write_text(art.probe, json.dumps(probe, indent=1))
    return probe


#: What the quickstart did on a CPU without native bf16, as measured (bench/RESULTS.md, "Every machine").
FP32_CPU_MEASURED = ("87.4-96.2 min on an AMD EPYC with AVX2 only, 2 cores (2026-12-03); there stage 2 of `lavic` "
                     "did not learn on seed 0 with the warm-up of 5 steps the bf16 runs use (0.178), learned on each of "
                     "3 stage-2 seeds of that run's upstream with 30 (test HR@1 0.611 / 0.656 / 0.611), and with 30 "
                     "from scratch on seed 1 (0.656 against title-only 0.100), so stage 2 warms up over "
                     "stage2.fp32_warmup_steps where it trains in fp32; on seed 1's upstream stage-2 seeds 2 and 3 stayed "
                     "at chance (0.156, 0.078), so it may not learn on every seed there; a run at chance says so, and "
                     "--set stage2.attempts=2 --set stage2.chance_check_step=120 retries one still at chance at step 120 "
                     "with the next seed")


def _speed_note(cfg: LavicConfig) -> str | None:
    """What to expect where the run will not be the one the quickstart's figures were measured on.

    ``engine.precision: auto`` trains in fp32 on a CPU without AVX-512 BF16 or AMX (emulated bf16 is ~20x slower
    there); fp32 on such a CPU is slower than bf16 on one that has it, and its stage 2 warms up differently
    (``stage2.fp32_warmup_steps``): the person should know before the first hour, not after. None where CUDA is
    present or bf16 is native.
    """
    import torch

    from lavic_ray.model.precision import bf16_is_native, concrete_precision, cpu_summary

    if torch.cuda.is_available() or bf16_is_native("cpu"):
        return None
    fp32 = [(s, c) for s, c in (("stage 1", cfg.stage1), ("stage 2", cfg.stage2))
            if concrete_precision(c.engine.precision, "cpu") == "fp32"]
    auto = [s for s, c in fp32 if c.engine.precision == "auto"]
    how = f"{' and '.join(auto)} train in fp32 here (engine.precision auto)" if auto else "training runs as configured"
    warm = [f"{s} warms up over {c.warmup_for('fp32')} steps (fp32_warmup_steps; {c.warmup_steps} with bf16)"
            for s, c in fp32 if c.warmup_for("fp32") != c.warmup_steps]
    return (f"note: this CPU ({cpu_summary()}) has no native bf16, so {how}{', and ' + ', '.join(warm) if warm else ''}. "
            f"Measured on such a CPU: {FP32_CPU_MEASURED}. The report says whether this run learned")


def run_quickstart(cfg: LavicConfig, console: Console | None = None) -> dict[str, dict]:
    """Run every step under ``cfg.storage_root``; return ``{method: metrics}`` on the test split.

    The dataset is ``dataset.root`` when set (the pipeline job on a user's data), else
    the synthetic catalog, made under the storage root. ``console`` shows each step (a
    silent one by default).
    """
    from lavic_ray.runtime import ensure_ray

    console = console or Console(enabled=False)
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.monotonic()
        out = fn(*a, **k)
        timings[name] = round(time.monotonic() - t, 1)
        log.info("quickstart: %s took %.0f s", name, timings[name])
        return out

    art = Artifacts(cfg.storage_root)
    # steps a rerun takes from an earlier one: the wall time then says nothing about a run from scratch
    reused = (["stage 1"] if workflow.stage_done(art.stage1) else []) + [
        f"stage 2 ({v})" for v in cfg.job.variants if workflow.stage_done(art.stage2(v))]
    steps = ["dataset", "model", "stage 1 (with the probe before and after)", "item embedding tables",
             "stage 2: " + ", ".join(cfg.job.variants), "evaluation of every method on the test split", "report"]
    n = len(steps)
    note = _speed_note(cfg)
    if note:
        console.line(note)
    with console.step(steps[0] + (f" {cfg.dataset.root}" if cfg.dataset.root else " (the synthetic catalog)"), 1, n):
        root = timed("synthetic catalog", workflow.dataset_root, cfg, art, create=True)
        report = validate_root(root)
        if not report.ok:
            raise InvalidInput(f"the dataset {root} failed validation:\n" + report.render(20))
    # its own local Ray unless this runs inside a job: never join a cluster someone else started on this machine
    ensure_ray("local")
    with console.step(f"{steps[1]} {cfg.model.checkpoint}", 2, n):
        cfg, art = timed("model", workflow.resolve, cfg, build=True)  # a Ray task: the driver loads no model
    write_config(art.root, cfg)

    with console.step(steps[2], 3, n):
        probe = _probe(cfg, art, timed)
    with console.step(steps[3], 4, n):
        for which in dict.fromkeys(VARIANTS[v].table for v in cfg.job.variants if VARIANTS[v].table):
            if not storage.exists(art.table(which)):
                timed(f"embed ({which})", workflow.embed, cfg, art, which)
    with console.step(steps[4], 5, n):
        runs = timed("stage 2 (every variant)", workflow.stage2_variants, cfg, art, tuple(cfg.job.variants), timed)
    with console.step(steps[5], 6, n):
        results = workflow.evaluate_methods(cfg, art, methods_of(cfg), runs, "test", timed)
    with console.step(steps[6], 7, n):
        histories = {"stage1": json.loads(storage.fetch(art.stage1 / "history.json").read_text())}
        for name, r in runs.items():
            histories[f"stage2 {name}"] = json.loads(storage.fetch(Path(r.stage2_dir) / "history.json").read_text())
        art.report.mkdir(parents=True, exist_ok=True)
        plotted = _plot(histories, art.report / "training_curves.png")
        for name, r in runs.items():
            results[name].update(_verdict(histories[f"stage2 {name}"]))
            attempts = Path(r.stage2_dir) / workflow.ATTEMPTS_FILE
            if attempts.is_file():  # stage2.attempts > 1: every attempt's seed and verdict
                results[name]["attempts"] = json.loads(attempts.read_text())
        if results.get("lavic", {}).get("learned") is False:
            if "after" in probe and "teacher" not in probe:  # a synthetic catalog: its attribute truth
                probe = _probe_teacher(cfg, art, probe, timed)
            elif "after" not in probe and "words" not in probe:  # any other: its descriptions' words
                probe = _probe_words(cfg, art, probe, timed)
        timings["total"] = round(time.monotonic() - t_start, 1)
        _write_report(art, cfg, results, probe, timings, workflow.dataset(cfg), histories, plotted, reused)
        storage.publish(art.report)
        storage.publish(art.probe)
    console.line(format_table(results))
    blind = _blind_text(probe) or _words_text(probe) or _carried_text(probe)
    for name in runs:
        if results[name]["learned"] is False:
            curve = ", ".join(f"step {s}: {h:.2f}" for s, h in results[name]["valid_curve"])
            if name == "lavic":
                console.line(f"WARNING: stage 2 of {name} did not learn: its validation HR@1 stayed at chance "
                             f"({results[name]['valid_chance_hr@1']:.2f}): {curve}. Its test figures are an untrained "
                             "reranker's; see the report")
                if blind:
                    console.line(blind)
            else:
                console.line(f"note: the ablation {name} stayed at chance ({curve}): what it lacks is what decides here")
    console.line(f"report: {art.report / 'report.md'}")
    return results


def _verdict(history: list[dict]) -> dict:
    """``learned`` (False: stage 2 stayed at chance) and the validation curve, for the results JSON."""
    from lavic_ray.eval.metrics import learning_verdict

    v = learning_verdict(history)
    out = {"learned": v["learned"], "valid_curve": v["valid_curve"]}
    if v["learned"] is not None:
        out.update({"best_valid_hr@1": v["best_valid_hr@1"], "best_step": v["best_step"],
                    "valid_chance_hr@1": v["chance_hr@1"], "valid_p_value": v["p_value"]})
    return out


def _blind_text(probe: dict) -> str | None:
    """What the probes say of the decisive attributes the 5 vectors do not carry after stage 1 (None: every one is
    carried, or no probe ran): whether the full-token model (the teacher) names them, where it was probed."""
    from lavic_ray.eval.probe import near_chance

    after = near_chance(probe.get("after", {})) if probe else {}
    if not after:
        return None
    teacher = probe.get("teacher")
    unseen = near_chance(teacher or {})

    def figures(found: dict) -> str:
        return ", ".join(f"{a} {acc:.3f}, chance {chance:.3f}" for a, (acc, chance) in found.items())

    out = []
    lost = {a: v for a, v in after.items() if a not in unseen}
    if lost:
        what, it = figures(lost), _it(lost)
        seen = (f" (from all its image tokens the model names {it}: "
                + ", ".join(f"{a} {teacher[f'{a}_accuracy']:.3f}" for a in lost) + ")") if teacher else ""
        out.append(f"After stage 1, descriptions generated from the 5 vectors name the {' and the '.join(lost)} no "
                   f"better than a guess ({what}; {probe['after']['items']} items){seen}: the vectors do not carry "
                   f"{it} in a form the LLM reads, so stage 2 cannot match requests on {it}.")
    both = {a: unseen[a] for a in after if a in unseen}
    if both:
        what, it = figures(both), _it(both)
        out.append(f"The model cannot name the {' and the '.join(both)} even from all its image tokens ({what}; "
                   f"{teacher['items']} items), nor from the 5 vectors after stage 1: the teacher LaViC distils from "
                   f"does not see {it}, and no stage can put {it} into the vectors. The limit is the model's vision "
                   "side (the quickstart's small model trains its own from scratch on the catalog), not LaViC's stages.")
    return " ".join(out)


def _carried_text(probe: dict) -> str | None:
    """For a ``lavic`` that did not learn although the 5 vectors carry every decisive attribute after stage 1 (None
    otherwise, or without the probe): then the vision side and stage 1 did their part, and stage 2 is what failed."""
    from lavic_ray.eval.probe import near_chance

    after = (probe or {}).get("after")
    if not after or near_chance(after):
        return None
    attrs = after.get("attributes", [])
    figures = ", ".join(f"{a} {after[f'{a}_accuracy']:.3f}, chance {after[f'{a}_chance']:.3f}" for a in attrs
                        if f"{a}_chance" in after)
    return (f"After stage 1, descriptions generated from the 5 vectors name every decisive attribute ({figures}; "
            f"{after['items']} items): the vision side and stage 1 did their part, and what did not learn is stage 2, "
            "which did not find how to read the vectors within its steps (see its validation curve).")


def _it(things) -> str:
    """The pronoun for ``things``: "it" for one, else "them"."""
    return "it" if len(things) == 1 else "them"


def _listing(words: list[str], limit: int = 12) -> str:
    return ", ".join(words[:limit]) + (f" and {len(words) - limit} more" if len(words) > limit else "")


def _word_order(w: dict) -> list[str]:
    """A word probe's words, the most frequent first."""
    return sorted(w["teacher"], key=lambda x: (-w["teacher"][x][0], x))


def _words_text(probe: dict) -> str | None:
    """On a dataset without attribute truth: which of the words that set its descriptions apart the model does not
    read from the image, or the 5 vectors do not carry (None: no word probe ran)."""
    from lavic_ray.eval.probe import names_word

    w = probe.get("words") if probe else None
    if not w or not w["teacher"]:
        return None
    order = _word_order(w)
    seen = [x for x in order if names_word(w["teacher"][x])]
    carried = [x for x in seen if x in w["after"] and names_word(w["after"][x])]
    lost = [x for x in seen if x not in carried]
    unseen = [x for x in order if x not in seen]
    out = [f"Of the {len(order)} words that set this dataset's descriptions apart and that its requests use (each in 3 or "
           f"more of the {w['items']} probed items' descriptions), the model names {len(seen)} from all its image tokens"
           + (f" ({_listing(seen)})" if seen else "") + f"; from the title + 5 vectors after stage 1, {len(carried)} of those."]
    if lost:
        it = _it(lost)
        out.append(f"The vectors lost {_listing(lost)}: if the requests turn on {it}, stage 1 did not carry {it} into "
                   "the vectors in a form the LLM reads.")
    if unseen:
        it = _it(unseen)
        out.append(f"It names none of {_listing(unseen)} from the image: if the requests turn on {it}, the model's "
                   f"vision side does not see {it} and no LaViC stage can put {it} into the vectors (a word that "
                   "varies at random, such as a description's phrasing, lands here too).")
    return " ".join(out)


def _word_probe_lines(probe: dict) -> list[str]:
    w = probe["words"]
    order = _word_order(w)

    def share(c: list[int] | None) -> str:
        return f"{c[1] / max(c[0], 1):.2f} / {c[3] / max(c[2], 1):.2f}" if c else "-"

    text = _words_text(probe)
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


def _probe_lines(probe: dict) -> list[str]:
    if "after" not in probe:
        return _word_probe_lines(probe) if probe.get("words") else []
    attrs = probe["after"].get("attributes", ["colour", "pattern"])
    blind = _blind_text(probe)
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


def _write_report(art, cfg, results, probe, timings, dataset, histories, plotted: bool = True,
                  reused: list[str] = ()) -> None:
    from lavic_ray.model.formulations import make_formulation
    from lavic_ray.model.precision import cpu_summary

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
        carried = _carried_text(probe)
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
        *[_verdict_row(v, results[v]) for v in variants], "",
        *_attempt_lines(results, variants, s2),
        *(_probe_lines(probe) if probe else []),
        *(_target_lines(hr, gap, head, timings, reused) if gap is not None else []),
        "![training curves](training_curves.png)" if plotted else "(no training-curve plot: matplotlib is not installed)", "",
        "## Timings (s)", "", f"On {machine}.", "", "| step | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in timings.items()], "",
    ]
    atomic_write_text(art.report / "report.md", "\n".join(lines) + "\n")
    write_config(art.report, cfg)
    (art.report / "results.json").write_text(json.dumps({"methods": results, "probe": probe, "timings": timings,
                                                         "machine": machine}, indent=1))


def _target_lines(hr: float, gap: float, head: str, timings: dict, reused: list[str] = ()) -> list[str]:
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


def _attempt_lines(results: dict, variants: list[str], s2) -> list[str]:
    """The set-aside attempts of ``stage2.attempts`` (none: nothing to say)."""
    rows = [(v, a) for v in variants for a in results[v].get("attempts", [])]
    if not any(a["attempt"] > 1 for _, a in rows):
        return []
    return [f"`stage2.attempts: {s2.attempts}`: an attempt whose validation was still at chance at step "
            f"{s2.chance_check_step} was set aside and the next started with the next seed, the same rule for every variant; "
            "the rows above are each variant's last attempt.", "",
            "| variant | attempt | seed | learned | steps | validation HR@1 by step |", "|---|---|---|---|---|---|",
            *[f"| {v} | {a['attempt']} | {a['seed']} | {'yes' if a['learned'] else 'no' if a['learned'] is False else 'unknown'} "
              f"| {a['steps']} | {', '.join(f'{s}: {h:.2f}' for s, h in a['valid_curve'])} |" for v, a in rows], ""]


def _verdict_row(name: str, m: dict) -> str:
    learned = {True: "yes", False: "**no**", None: "unknown (no validation)"}[m.get("learned")]
    curve = ", ".join(f"{s}: {h:.2f}" for s, h in m.get("valid_curve", []))
    best = f"{m['best_valid_hr@1']:.3f} ({m['best_step']})" if "best_valid_hr@1" in m else "-"
    chance = f"{m['valid_chance_hr@1']:.3f}" if "valid_chance_hr@1" in m else "-"
    return f"| {name} | {learned} | {best} | {chance} | {curve} |"
