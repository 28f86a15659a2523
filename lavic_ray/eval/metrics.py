"""Ranking metrics: HR@k, NDCG@k, MRR@k, ValidRatio and the oracle ceiling.

Rules (stated once, used everywhere):

* A prediction is a ranked list of item IDs, best first. Repeats count once (the
  first occurrence). A method that scores candidates is turned into a ranking by
  :func:`rank_by_scores`, which breaks ties **pessimistically**: a ground-truth
  item tied with a non-ground-truth item ranks after it, so a method that gives
  every candidate the same score gets HR@1 = 0, never the first candidate's luck.
* Per conversation: HR@k = 1 if any ground-truth item is in the top k; NDCG@k uses
  binary relevance with the ideal DCG of min(|gt|, k) hits; MRR@k = 1 / rank of the
  first ground-truth item within the top k (0 beyond).
* Per ground-truth item (the paper's count over all ground-truth items): each
  (conversation, ground-truth item) pair is one sample, hit@k if that item is in
  the top k; NDCG@k = 1/log2(1 + rank), MRR@k = 1/rank.
* ValidRatio: the fraction of conversations whose top prediction is one of the
  candidates (an empty prediction is invalid). Scoring methods are 1.0 by construction.
* Oracle HR@k: the fraction of conversations with a ground-truth item among the
  first k candidates - the ceiling of any reranker of that list.
* Chance HR@1: what a random order of each list scores on average (the share of
  ground-truth items in the list); :func:`above_chance` tests an HR@1 against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_KS = (1, 5, 10)


def rank_by_scores(candidates: Sequence[str], scores: Sequence[float], gt_items: Iterable[str] = ()) -> list[str]:
    """Order candidates by descending score, ties broken against the ground truth.

    Args:
        candidates: Candidate IDs.
        scores: One finite score per candidate (higher is better); NaN ranks last.
        gt_items: Ground-truth IDs, used only to break ties pessimistically.
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    gt = set(gt_items)

    def key(i: int):
        s = scores[i]
        s = -math.inf if s is None or math.isnan(s) else s
        return (-s, candidates[i] in gt, i)

    return [candidates[i] for i in sorted(range(len(candidates)), key=key)]


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for r in ranking:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


@dataclass(frozen=True)
class Judged:
    """One conversation's prediction, judged.

    Attributes:
        conv_id: Which conversation.
        gt_items: Its ground-truth IDs.
        candidates: The candidate list the method saw.
        ranking: The method's ranked prediction (deduplicated).
    """

    conv_id: str
    gt_items: tuple[str, ...]
    candidates: tuple[str, ...]
    ranking: tuple[str, ...]

    @classmethod
    def make(cls, conv_id: str, gt_items: Sequence[str], candidates: Sequence[str], ranking: Sequence[str]) -> "Judged":
        if not gt_items:
            raise ValueError(f"{conv_id}: no ground-truth items")
        return cls(conv_id, tuple(dict.fromkeys(gt_items)), tuple(candidates), tuple(_dedupe(ranking)))

    def gt_ranks(self) -> dict[str, int | None]:
        """1-based rank of each ground-truth item in the prediction (None if absent)."""
        pos = {r: n for n, r in enumerate(self.ranking, start=1)}
        return {g: pos.get(g) for g in self.gt_items}

    @property
    def valid(self) -> bool:
        return bool(self.ranking) and self.ranking[0] in self.candidates


def conversation_metrics(j: Judged, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Per-conversation HR@k, NDCG@k, MRR@k (see the module rules)."""
    ranks = sorted(r for r in j.gt_ranks().values() if r is not None)
    out = {}
    for k in ks:
        within = [r for r in ranks if r <= k]
        out[f"hr@{k}"] = 1.0 if within else 0.0
        idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(j.gt_items), k) + 1))
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in within) / idcg
        out[f"mrr@{k}"] = 1.0 / within[0] if within else 0.0
    return out


def per_gt_item_metrics(j: Judged, ks: Sequence[int] = DEFAULT_KS) -> list[dict[str, float]]:
    """One metrics dict per ground-truth item of the conversation."""
    rows = []
    for r in j.gt_ranks().values():
        row = {}
        for k in ks:
            hit = r is not None and r <= k
            row[f"hr@{k}"] = 1.0 if hit else 0.0
            row[f"ndcg@{k}"] = 1.0 / math.log2(r + 1) if hit else 0.0
            row[f"mrr@{k}"] = 1.0 / r if hit else 0.0
        rows.append(row)
    return rows


def aggregate(judged: Sequence[Judged], ks: Sequence[int] = DEFAULT_KS, oracle_k: int = 10) -> dict[str, float | int]:
    """Mean metrics over conversations and over ground-truth items.

    Returns:
        ``conversations``, ``gt_items``, ``hr@k``/``ndcg@k``/``mrr@k`` (per
        conversation), the same with ``_per_gt_item``, ``valid_ratio``,
        ``oracle_hr@{oracle_k}`` and ``oracle_hr@{oracle_k}_per_gt_item``.
    """
    n = len(judged)
    if n == 0:
        raise ValueError("no conversations to evaluate")
    out: dict[str, float | int] = {"conversations": n}
    conv_rows = [conversation_metrics(j, ks) for j in judged]
    gt_rows = [row for j in judged for row in per_gt_item_metrics(j, ks)]
    out["gt_items"] = len(gt_rows)
    for key in conv_rows[0]:
        out[key] = sum(r[key] for r in conv_rows) / n
        out[f"{key}_per_gt_item"] = sum(r[key] for r in gt_rows) / len(gt_rows)
    out["valid_ratio"] = sum(j.valid for j in judged) / n
    out[f"oracle_hr@{oracle_k}"] = sum(any(g in j.candidates[:oracle_k] for g in j.gt_items) for j in judged) / n
    out[f"oracle_hr@{oracle_k}_per_gt_item"] = (
        sum(g in j.candidates[:oracle_k] for j in judged for g in j.gt_items) / len(gt_rows)
    )
    out["chance_hr@1"] = chance_hr1(judged)
    return out


def chance_hr1(judged: Sequence[Judged]) -> float:
    """The HR@1 a random order of each candidate list gets on average: the mean share of ground-truth items
    in the list (0 for a list without one)."""
    if not judged:
        raise ValueError("no conversations")
    return sum(len(set(j.gt_items) & set(j.candidates)) / len(j.candidates) if j.candidates else 0.0
               for j in judged) / len(judged)


def binomial_tail(hits: int, n: int, p: float) -> float:
    """P(X >= hits) for X ~ Binomial(n, p): the p-value of scipy's one-sided exact binomial test."""
    from scipy.stats import binomtest

    if hits <= 0 or n <= 0:
        return 1.0
    return float(binomtest(min(hits, n), n, min(max(p, 0.0), 1.0), alternative="greater").pvalue)


def above_chance(hr1: float, n: int, chance: float, alpha: float = 0.05) -> bool:
    """Whether an HR@1 over ``n`` conversations is above the random-order ``chance`` HR@1 at level ``alpha``
    (one-sided exact binomial test on the number of hits)."""
    return n > 0 and binomial_tail(round(hr1 * n), n, chance) < alpha


def learning_verdict(history: Sequence[dict], alpha: float = 0.05) -> dict:
    """Did a stage-2 run learn? Read from its validations (``history.json``).

    The run learned when its best validation HR@1 is above the validation split's chance HR@1
    at level ``alpha``, Bonferroni-corrected for the number of validations it was picked from
    (the kept adapter is the best one). Without validations nothing can be said: ``learned``
    is None.

    Returns:
        ``learned``, ``best_valid_hr@1``, ``chance_hr@1``, ``valid_conversations``, ``p_value``
        and ``valid_curve`` (``[step, HR@1]`` pairs).
    """
    vals = [h for h in history if "valid_hr@1" in h]
    curve = [[int(h["step"]), float(h["valid_hr@1"])] for h in vals]
    if not vals or "valid_chance_hr@1" not in vals[-1]:
        return {"learned": None, "valid_curve": curve}
    best = max(vals, key=lambda h: h["valid_hr@1"])
    n, chance = int(best["valid_conversations"]), float(best["valid_chance_hr@1"])
    p = min(1.0, binomial_tail(round(best["valid_hr@1"] * n), n, chance) * len(vals))
    return {"learned": p < alpha, "best_valid_hr@1": best["valid_hr@1"], "best_step": int(best["step"]),
            "chance_hr@1": chance, "valid_conversations": n, "p_value": p, "valid_curve": curve}
