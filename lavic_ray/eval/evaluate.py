"""Evaluation runs: rank each conversation's candidates with a method and score the rankings.

Methods are registered by name. Baselines live here; the LaViC methods register
themselves from their own modules, so this module never imports training code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lavic_ray.artifacts import atomic_write_text, write_json
from lavic_ray.config import LavicConfig
from lavic_ray.data.layout import Catalog
from lavic_ray.data.records import Conversation
from lavic_ray.eval.metrics import Judged, aggregate, rank_by_scores
from lavic_ray.retrieval import conversation_query, make_retriever


@dataclass
class EvalContext:
    """What a method may use: the catalog (None when not given) and the configuration."""

    config: LavicConfig
    catalog: Catalog | None = None


class Method:
    """A ranking method: one ranked ID list per conversation."""

    name = ""
    needs_items = False

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx

    def rank(self, convs: Sequence[Conversation], key: str) -> list[list[str]]:
        raise NotImplementedError


class ScoringMethod(Method):
    """A method that scores every candidate; ranking uses the pessimistic tie rule."""

    def score(self, convs: Sequence[Conversation], key: str) -> list[list[float]]:
        raise NotImplementedError

    def rank(self, convs, key):
        scores = self.score(convs, key)
        return [rank_by_scores(c.candidate_list(key), s, c.gt_items) for c, s in zip(convs, scores)]


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@register_method("first-candidate")
class FirstCandidate(Method):
    """The candidate list's own order (for SBERT lists: the retriever's ranking)."""

    def rank(self, convs, key):
        return [list(c.candidate_list(key)) for c in convs]


@register_method("random")
class RandomOrder(Method):
    """A seeded shuffle per conversation (independent of evaluation order)."""

    def rank(self, convs, key):
        out = []
        for c in convs:
            ids = list(c.candidate_list(key))
            random.Random(f"{self.ctx.config.eval.seed}:{c.conv_id}").shuffle(ids)
            out.append(ids)
        return out


class _RetrieverRerank(ScoringMethod):
    needs_items = True
    kind = ""

    def score(self, convs, key):
        rc = self.ctx.config.retrieval
        ids = list(dict.fromkeys(i for c in convs for i in c.candidate_list(key)))
        kwargs = (
            {"model": rc.sbert_model, "device": rc.device, "batch_size": rc.batch_size}
            if self.kind == "sbert"
            else {"k1": rc.bm25_k1, "b": rc.bm25_b, "stem": rc.bm25_stem}
        )
        retriever = make_retriever(self.kind, **kwargs).index_items([self.ctx.catalog[i] for i in ids], rc.item_text)
        return retriever.score([conversation_query(c) for c in convs], [c.candidate_list(key) for c in convs])


@register_method("sbert")
class SBERTRerank(_RetrieverRerank):
    """Cosine similarity of conversation and candidate title embeddings."""

    kind = "sbert"


@register_method("bm25")
class BM25Rerank(_RetrieverRerank):
    """BM25 score of the candidate title for the conversation text."""

    kind = "bm25"


def evaluate(
    convs: Sequence[Conversation],
    method: str,
    candidates_key: str,
    ctx: EvalContext,
    out_dir: str | Path | None = None,
) -> dict:
    """Rank and score; optionally write metrics, predictions and config to ``out_dir``.

    Raises:
        ValueError: Unknown method, a method that needs item titles without a
            catalog, or candidates the catalog lacks (the message counts them).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    convs = list(convs)
    if ctx.config.eval.limit:
        convs = convs[: ctx.config.eval.limit]
    if not convs:
        raise ValueError("no conversations to evaluate")
    for c in convs:
        c.candidate_list(candidates_key)  # fail early, naming the conversation
    m = METHODS[method](ctx)
    if m.needs_items:
        if ctx.catalog is None:
            raise ValueError(f"method {method!r} reads item titles: pass --items (a dataset root or item metadata file)")
        missing = ctx.catalog.missing(i for c in convs for i in c.candidate_list(candidates_key))
        if missing:
            raise ValueError(
                f"method {method!r} needs the titles of {len(missing)} candidate item(s) the catalog lacks "
                f"(e.g. {', '.join(missing[:5])}); give the item metadata that covers them"
            )
    rankings = m.rank(convs, candidates_key)
    judged = [Judged.make(c.conv_id, c.gt_items, c.candidate_list(candidates_key), r) for c, r in zip(convs, rankings)]
    metrics = {"method": method, "candidates_key": candidates_key, **aggregate(judged, ctx.config.eval.ks)}
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


# The LaViC methods register themselves (their module imports the model code lazily).
import lavic_ray.eval.lavic_methods  # noqa: E402,F401
