"""Ranking methods: what every method provides, and the baselines that need no trained model.

A method ranks each conversation's candidate list. The LaViC methods live in
:mod:`lavic_ray.eval.lavic_methods`; :mod:`lavic_ray.eval.evaluate` puts both tables together.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lavic_ray.config import LavicConfig
from lavic_ray.data.layout import Catalog
from lavic_ray.data.records import Conversation
from lavic_ray.eval.metrics import rank_by_scores
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


class FirstCandidate(Method):
    """The candidate list's own order (for SBERT lists: the retriever's ranking)."""

    name = "first-candidate"

    def rank(self, convs, key):
        return [list(c.candidate_list(key)) for c in convs]


class RandomOrder(Method):
    """A seeded shuffle per conversation (independent of evaluation order)."""

    name = "random"

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
        retriever = make_retriever(self.kind, rc).index_items([self.ctx.catalog[i] for i in ids], rc.item_text)
        return retriever.score([conversation_query(c) for c in convs], [c.candidate_list(key) for c in convs])


class SBERTRerank(_RetrieverRerank):
    """Cosine similarity of conversation and candidate title embeddings."""

    name = kind = "sbert"


class BM25Rerank(_RetrieverRerank):
    """BM25 score of the candidate title for the conversation text."""

    name = kind = "bm25"


#: The baselines by name.
BASELINES: dict[str, type[Method]] = {m.name: m for m in (FirstCandidate, RandomOrder, SBERTRerank, BM25Rerank)}
