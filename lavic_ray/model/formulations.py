"""Stage-2 formulations: each owns its training samples, its loss, its scoring and its description.

* :class:`Listwise` (the paper's): the conversation and all candidates in one prompt; the
  target is the ground truth's label (its ID, or a letter). Scored by each candidate
  answer's log-likelihood.
* :class:`Pointwise`: the conversation and one candidate -> " yes" / " no"; scored by
  log P(yes) - log P(no). Small models learn it much faster.

Training (:mod:`lavic_ray.train.stage2`), evaluation and serving
(:class:`lavic_ray.model.recommender.Recommender`) all reach a formulation through
:func:`make_formulation`; a new formulation is a class here and an entry in
:data:`FORMULATIONS` (its name also goes into ``Stage2Config.formulation``; a test keeps
the two equal).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from lavic_ray.config import Stage2Config
from lavic_ray.data.records import Conversation
from lavic_ray.errors import InvalidInput
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.prompts import PromptBuilder, collate
from lavic_ray.model.scoring import (
    DEFAULT_MAX_ROWS,
    Request,
    VectorLookup,
    pointwise_log_probs,
    score_listwise_batch,
    score_pointwise_batch,
)

#: ``ids -> [(item_id, title), ...]``: the candidates' titles, from the catalog.
Candidates = Callable[[Sequence[str]], list[tuple[str, str]]]


@dataclass(frozen=True)
class ListwiseSample:
    conv: Conversation
    candidates: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class PointwiseSample:
    conv: Conversation
    candidates: tuple[str, ...]
    positive: tuple[bool, ...]


def listwise_samples(convs: list[Conversation], key: str, seed: int) -> list[ListwiseSample]:
    """One sample per (conversation, ground-truth item), the item inserted if the list lacks it.

    A list without the ground truth gets it in place of a random non-ground-truth candidate (the
    reference's rule: the other candidates keep their positions); the source data is never mutated.
    """
    out = []
    for conv in convs:
        cands = conv.candidate_list(key)
        for g in conv.gt_items:
            lst = list(cands)
            if g not in lst:
                rng = random.Random(f"{seed}:{conv.conv_id}:{g}")
                others = [i for i, c in enumerate(lst) if c not in conv.gt_items]
                if others:
                    lst[rng.choice(others)] = g
                else:  # every candidate is a ground truth: the list grows
                    lst.insert(rng.randrange(len(lst) + 1), g)
            out.append(ListwiseSample(conv, tuple(lst), lst.index(g)))
    return out


#: how alike two items look: ``similar(item, others)`` -> one similarity per other item (higher: more alike)
Similarity = Callable[[str, Sequence[str]], Sequence[float]]


def pointwise_samples(convs: list[Conversation], key: str, seed: int, negatives: int,
                      similar: Similarity | None = None) -> list[PointwiseSample]:
    """Per (conversation, ground-truth item): that item ("yes") and up to ``negatives`` other
    candidates of its list ("no"), all scored after one shared conversation prefix.

    Other ground-truth items of a multi-item conversation are never negatives. The negatives are
    drawn at random from the list, or with ``similar`` (``stage2.negative_sampling=visual``) they are
    the list's candidates that look most like the ground truth: the ones a recommender must tell
    apart by what the conversation says about the look.
    """
    out = []
    for s in listwise_samples(convs, key, seed):
        gt = s.candidates[s.answer]
        rng = random.Random(f"{seed}:{s.conv.conv_id}:{gt}:negatives")
        pool = [c for c in s.candidates if c not in s.conv.gt_items]
        if similar is not None and pool:
            sims = similar(gt, pool)
            negs = tuple(c for _, c in sorted(zip(sims, pool), key=lambda sc: -sc[0])[:negatives])
        else:
            negs = tuple(rng.sample(pool, min(negatives, len(pool))))
        out.append(PointwiseSample(s.conv, (gt, *negs), (True,) + (False,) * len(negs)))
    return out


def yes_no_loss(lp: torch.Tensor, positives: list[tuple[bool, ...]]) -> torch.Tensor:
    """The balanced yes/no NLL: positives and negatives weigh half each, whatever their ratio.

    ``lp`` is request-major ``(candidates, 2)``: log P(" yes"), log P(" no") over the whole vocabulary.
    (Measured as no help and removed: the pair normalised alone, and a softmax ranking loss over a sample's
    candidates - docs/history.md.)
    """
    positive = torch.tensor([p for pos in positives for p in pos], device=lp.device)
    if positive.shape[0] != lp.shape[0]:
        raise ValueError(f"{lp.shape[0]} rows of log-probabilities for {positive.shape[0]} candidates")
    nll = -torch.where(positive, lp[:, 0], lp[:, 1])
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    weight = torch.where(positive, 1.0 / max(n_pos, 1), 1.0 / max(n_neg, 1)) / ((n_pos > 0) + (n_neg > 0))
    return (weight * nll).sum()


def length_estimate(sample: ListwiseSample | PointwiseSample, title: Callable[[str], str]) -> int:
    """Characters of the conversation and of every candidate's ID and title: a cheap proxy for a
    sample's tokens, for length-grouped micro-batches."""
    return len(sample.conv.context) + sum(len(title(c)) + len(c) for c in sample.candidates)


class Formulation(ABC):
    """How stage 2 poses the recommendation to the language model.

    Args:
        cfg: The stage-2 section (formulation options, prefix sharing, ...).
    """

    name: ClassVar[str] = ""
    #: Whether the model's answer can be decoded freely into an item (``lavic-generate``).
    generates_ids: ClassVar[bool] = False

    def __init__(self, cfg: Stage2Config):
        self.cfg = cfg

    @abstractmethod
    def samples(self, convs: list[Conversation], key: str, seed: int, similar: Similarity | None = None) -> list:
        """The training samples of a split (``similar``: how alike items look, for formulations that pick
        negatives by it)."""

    @abstractmethod
    def loss(self, engine, builder: PromptBuilder, batch: list, candidates: Candidates,
             lookup: VectorLookup | None) -> tuple[torch.Tensor, int]:
        """The loss of a micro-batch through ``engine`` (its forward) and the input tokens it ran."""

    @abstractmethod
    def score(self, model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
              max_rows: int = DEFAULT_MAX_ROWS, sharing: str = "auto") -> list[list[float]]:
        """A score per candidate of each request (higher is better)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for reports."""


class Listwise(Formulation):
    """All candidates in one prompt; the target is the ground truth's label (the paper's)."""

    name = "listwise"
    generates_ids = True

    def samples(self, convs, key, seed, similar=None):
        return listwise_samples(convs, key, seed)

    def loss(self, engine, builder, batch, candidates, lookup):
        encoded = [builder.listwise(s.conv.context, candidates(s.candidates), s.answer) for s in batch]
        b = collate(encoded, builder.pad_id, "right")
        device = engine.device
        vectors = lookup(b.images).to(device) if b.images else None
        b = b.to(device)
        out = engine(b.input_ids, b.attention_mask, vectors=vectors, labels=b.labels)
        return out.loss, int(b.attention_mask.sum())

    def score(self, model, builder, requests, lookup, max_rows=DEFAULT_MAX_ROWS, sharing="auto"):
        return score_listwise_batch(model, builder, requests, lookup, max_rows, sharing)

    def describe(self):
        return f"listwise (answer = {self.cfg.answer}; rank by the answer's log-likelihood)"


class Pointwise(Formulation):
    """The conversation and one candidate -> " yes" / " no"; ranked by log P(yes) - log P(no)."""

    name = "pointwise"

    def samples(self, convs, key, seed, similar=None):
        return pointwise_samples(convs, key, seed, self.cfg.negatives,
                                 similar if self.cfg.negative_sampling == "visual" else None)

    def loss(self, engine, builder, batch, candidates, lookup):
        """The balanced yes/no NLL over the vocabulary (:func:`yes_no_loss`) of each sample's candidates."""
        requests = [(s.conv.context, candidates(s.candidates)) for s in batch]
        lp, tokens = engine(fn=pointwise_log_probs, builder=builder, requests=requests, lookup=lookup, max_rows=None,
                            sharing=self.cfg.prefix_sharing, gradient_checkpointing=self.cfg.engine.gradient_checkpointing)
        return yes_no_loss(lp, [s.positive for s in batch]), tokens

    def score(self, model, builder, requests, lookup, max_rows=DEFAULT_MAX_ROWS, sharing="auto"):
        return score_pointwise_batch(model, builder, requests, lookup, max_rows, sharing)

    def describe(self):
        how = " (the most alike in the vectors)" if self.cfg.negative_sampling == "visual" else ""
        return f"pointwise (1 positive : {self.cfg.negatives} negatives{how}; rank by log P(yes) - log P(no))"


#: Every formulation by name (``stage2.formulation``).
FORMULATIONS: dict[str, type[Formulation]] = {f.name: f for f in (Listwise, Pointwise)}


def make_formulation(cfg: Stage2Config) -> Formulation:
    """The formulation ``cfg.formulation`` names."""
    try:
        return FORMULATIONS[cfg.formulation](cfg)
    except KeyError:
        raise InvalidInput(f"unknown stage-2 formulation {cfg.formulation!r}; use one of {sorted(FORMULATIONS)}") from None


def score_batch(model: LaViC, builder: PromptBuilder, formulation: str, requests: Sequence[Request],
                lookup: VectorLookup | None, max_rows: int = DEFAULT_MAX_ROWS, sharing: str = "auto") -> list[list[float]]:
    """Scores for a batch of requests with the formulation named ``formulation`` (its other options
    at their defaults; scoring reads none of them)."""
    if formulation not in FORMULATIONS:
        raise InvalidInput(f"unknown stage-2 formulation {formulation!r}; use one of {sorted(FORMULATIONS)}")
    form = FORMULATIONS[formulation](Stage2Config(formulation=formulation))
    return form.score(model, builder, requests, lookup, max_rows, sharing)
