"""Evaluation runs: rank each conversation's candidates with a method and score the rankings.

The methods are the baselines (:mod:`lavic_ray.eval.methods`) and the LaViC methods
(:mod:`lavic_ray.eval.lavic_methods`), by name in :data:`METHODS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from lavic_ray.artifacts import atomic_write_text, write_json
from lavic_ray.data.records import Conversation
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.lavic_methods import LAVIC_METHODS
from lavic_ray.eval.methods import BASELINES, EvalContext, Method

log = logging.getLogger(__name__)
from lavic_ray.eval.metrics import Judged, aggregate

#: Every method by name.
METHODS: dict[str, type[Method]] = {**BASELINES, **LAVIC_METHODS}


def evaluate(
    convs: Sequence[Conversation],
    method: str,
    candidates_key: str,
    ctx: EvalContext,
    out_dir: str | Path | None = None,
) -> dict:
    """Rank and score; optionally write metrics, predictions and config to ``out_dir``.

    Raises:
        InvalidInput: Unknown method, a method that needs item titles without a
            catalog, or candidates the catalog lacks (the message counts them).
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    convs = list(convs)
    if ctx.config.eval.limit:
        convs = convs[: ctx.config.eval.limit]
    if not convs:
        raise InvalidInput("no conversations to evaluate")
    for c in convs:
        c.candidate_list(candidates_key)  # fail early, naming the conversation
    m = METHODS[method](ctx)
    if m.needs_items:
        if ctx.catalog is None:
            raise InvalidInput(f"method {method!r} reads item titles: pass --items (a dataset root or item metadata file)")
        missing = ctx.catalog.missing(i for c in convs for i in c.candidate_list(candidates_key))
        if missing:
            raise InvalidInput(
                f"method {method!r} needs the titles of {len(missing)} candidate item(s) the catalog lacks "
                f"(e.g. {', '.join(missing[:5])}); give the item metadata that covers them"
            )
    rankings = m.rank(convs, candidates_key)
    judged = [Judged.make(c.conv_id, c.gt_items, c.candidate_list(candidates_key), r) for c, r in zip(convs, rankings)]
    metrics = {"method": method, "candidates_key": candidates_key, **aggregate(judged, ctx.config.eval.ks)}
    if ctx.catalog is not None:  # a ground truth the catalog does not know: likely item metadata from another release
        unknown = ctx.catalog.missing(g for c in convs for g in c.gt_items)
        metrics["gt_items_unknown_to_catalog"] = len(unknown)
        if unknown:
            log.warning("%d ground-truth item(s) are not in the catalog (e.g. %s): check that the item metadata matches "
                        "the conversations", len(unknown), ", ".join(unknown[:5]))
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "metrics.json", metrics, ctx.config)
        atomic_write_text(
            out / "predictions.jsonl",
            "".join(json.dumps({"conv_id": j.conv_id, "gt_items": j.gt_items, "ranking": j.ranking}) + "\n" for j in judged),
        )
    return metrics


def format_table(rows: dict[str, dict], keys: Sequence[str] = ("hr@1", "hr@1_per_gt_item", "ndcg@10", "mrr@10", "valid_ratio", "oracle_hr@10")) -> str:
    """A markdown table: one row per method."""
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)

