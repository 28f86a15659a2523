"""Why a quickstart (or pipeline) run learned or did not: the probes of stage 1 and the words of a verdict.

The probe before and after stage 1 asks, on a synthetic catalog with attribute truth, whether descriptions
generated from an item's 5 vectors name its decisive attributes; when stage 2 of ``lavic`` did not learn it also
asks the full-token model (the teacher), to tell an attribute the model cannot see from one the vectors lost. On a
catalog without attribute truth it reads the words of the descriptions instead. Every probe loads the model in a
Ray task where ``eval.resources`` says, never in the driver; results accumulate in ``probe.json``.
"""

from __future__ import annotations

import functools
import json

from lavic_ray import storage, workflow
from lavic_ray.artifacts import Artifacts, atomic_write_text
from lavic_ray.config import LavicConfig
from lavic_ray.runtime import remote_call


def run_probe(cfg: LavicConfig, art: Artifacts, timed) -> dict:
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
    items = probe_items(truth)
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


def probe_items(truth: dict) -> list[str]:
    """The items every probe describes: the first 40 of the test pool."""
    return sorted(i for i, t in truth.items() if t["pool"] == "test")[:40]


def probe_teacher(cfg: LavicConfig, art: Artifacts, probe: dict, timed) -> dict:
    """``probe["teacher"]``: the probe's reading of the full-token model's own descriptions of the same items (run
    when stage 2 of ``lavic`` did not learn, to tell an attribute the model cannot see from one the vectors lost)."""
    from lavic_ray.eval.probe import score_descriptions
    from lavic_ray.pipeline.describe import describe_items

    ds = workflow.dataset(cfg)
    truth = ds.attribute_truth()
    items = probe_items(truth)
    res = cfg.eval.resources
    texts = timed("probe of the teacher", remote_call, describe_items, cfg, items, num_cpus=res.cpus_per_actor,
                  num_gpus=res.gpus_per_actor)
    probe["teacher"] = score_descriptions(items, texts, truth, ds.attribute_vocabulary())
    atomic_write_text(art.probe, json.dumps(probe, indent=1))
    return probe


def probe_words(cfg: LavicConfig, art: Artifacts, probe: dict, timed) -> dict:
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


def verdict(history: list[dict]) -> dict:
    """``learned`` (False: stage 2 stayed at chance) and the validation curve, for the results JSON."""
    from lavic_ray.eval.metrics import learning_verdict

    v = learning_verdict(history)
    out = {"learned": v["learned"], "valid_curve": v["valid_curve"]}
    if v["learned"] is not None:
        out.update({"best_valid_hr@1": v["best_valid_hr@1"], "best_step": v["best_step"],
                    "valid_chance_hr@1": v["chance_hr@1"], "valid_p_value": v["p_value"]})
    return out


def blind_text(probe: dict) -> str | None:
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
                   "side (the checkpoint's tower and projector), not LaViC's stages.")
    return " ".join(out)


def carried_text(probe: dict) -> str | None:
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


def word_order(w: dict) -> list[str]:
    """A word probe's words, the most frequent first."""
    return sorted(w["teacher"], key=lambda x: (-w["teacher"][x][0], x))


def words_text(probe: dict) -> str | None:
    """On a dataset without attribute truth: which of the words that set its descriptions apart the model does not
    read from the image, or the 5 vectors do not carry (None: no word probe ran)."""
    from lavic_ray.eval.probe import names_word

    w = probe.get("words") if probe else None
    if not w or not w["teacher"]:
        return None
    order = word_order(w)
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


def diagnose(cfg: LavicConfig, art: Artifacts, results: dict, probe: dict, timed) -> dict:
    """When stage 2 of ``lavic`` did not learn: the teacher's probe (synthetic catalog) or the word probe (any
    other), once; returns the probe."""
    if results.get("lavic", {}).get("learned") is not False:
        return probe
    if "after" in probe and "teacher" not in probe:
        return probe_teacher(cfg, art, probe, timed)
    if "after" not in probe and "words" not in probe:
        return probe_words(cfg, art, probe, timed)
    return probe


def console_lines(results: dict, runs, probe: dict) -> list[str]:
    """The lines the console prints after the results table, about the variants that did not learn."""
    blind = blind_text(probe) or words_text(probe) or carried_text(probe)
    out = []
    for name in runs:
        if results[name]["learned"] is False:
            curve = ", ".join(f"step {s}: {h:.2f}" for s, h in results[name]["valid_curve"])
            if name == "lavic":
                out.append(f"WARNING: stage 2 of {name} did not learn: validation HR@1 stayed at chance "
                           f"({results[name]['valid_chance_hr@1']:.2f}): {curve}")
                out.append("  its test figures are an untrained reranker's; the report says why")
            else:
                out.append(f"note: the ablation {name} stayed at chance ({curve}): what it lacks is what decides here")
    if blind and any(results[n]["learned"] is False for n in runs if n == "lavic"):
        import textwrap

        out += textwrap.wrap(blind, 158, initial_indent="  ", subsequent_indent="  ")
    return out
