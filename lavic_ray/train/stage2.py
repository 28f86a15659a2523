"""Stage 2: recommendation fine-tuning (LoRA on the language model).

Each candidate's 5 vectors come from the item embedding table; the vision tower
never runs here. One training sample per ground-truth item; when a list lacks
that item it is inserted at a random position (a random non-ground-truth
candidate makes room), on a copy - the source data is never mutated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lavic_ray.config import LavicConfig, Stage2Config
from lavic_ray.data.layout import Catalog, read_conversations
from lavic_ray.data.records import Conversation
from lavic_ray.eval.metrics import Judged, aggregate, rank_by_scores
from lavic_ray.model.prompts import PromptBuilder, collate
from lavic_ray.model.scoring import pointwise_log_probs, score_batch
from lavic_ray.model.table import VectorTable
from lavic_ray.train.common import build_lavic, save_adapter
from lavic_ray.train.loop import Task


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
    """One sample per (conversation, ground-truth item), the item inserted if the list lacks it."""
    out = []
    for conv in convs:
        cands = conv.candidate_list(key)
        for g in conv.gt_items:
            lst = list(cands)
            if g not in lst:
                rng = random.Random(f"{seed}:{conv.conv_id}:{g}")
                others = [i for i, c in enumerate(lst) if c not in conv.gt_items]
                if others:
                    lst.pop(rng.choice(others))
                lst.insert(rng.randrange(len(lst) + 1), g)
            out.append(ListwiseSample(conv, tuple(lst), lst.index(g)))
    return out


def pointwise_samples(convs: list[Conversation], key: str, seed: int, negatives: int) -> list[PointwiseSample]:
    """Per (conversation, ground-truth item): that item ("yes") and up to ``negatives`` other
    candidates of its list ("no"), all scored after one shared conversation prefix.

    Other ground-truth items of a multi-item conversation are never negatives.
    """
    out = []
    for s in listwise_samples(convs, key, seed):
        gt = s.candidates[s.answer]
        rng = random.Random(f"{seed}:{s.conv.conv_id}:{gt}:negatives")
        pool = [c for c in s.candidates if c not in s.conv.gt_items]
        negs = tuple(rng.sample(pool, min(negatives, len(pool))))
        out.append(PointwiseSample(s.conv, (gt, *negs), (True,) + (False,) * len(negs)))
    return out


def ranking_loss(margins: torch.Tensor, positives: list[tuple[bool, ...]]) -> torch.Tensor:
    """Mean over samples of -log softmax(margins of the sample's candidates)[positive].

    ``margins`` is request-major (one row per candidate, samples in order); a sample
    without a negative carries no ranking signal and is skipped.
    """
    terms, n = [], 0
    for pos in positives:
        m = margins[n: n + len(pos)]
        n += len(pos)
        if len(pos) > 1 and any(pos):
            terms.append(-torch.log_softmax(m, dim=0)[pos.index(True)])
    if n != margins.shape[0]:
        raise ValueError(f"{margins.shape[0]} margins for {n} candidates")
    return torch.stack(terms).mean() if terms else margins.sum() * 0.0


def length_estimate(sample: ListwiseSample | PointwiseSample, title: Callable[[str], str]) -> int:
    """Characters of the conversation and of every candidate's ID and title: a cheap proxy for a
    sample's tokens, for length-grouped micro-batches."""
    return len(sample.conv.context) + sum(len(title(c)) + len(c) for c in sample.candidates)


class Stage2Task(Task):
    name = "stage2"
    best_metric = "valid_hr@1"
    higher_is_better = True

    def __init__(self, cfg: LavicConfig, catalog_root: str | Path, table: str | Path | None, domain: str | None = None):
        self.cfg = cfg
        self.scfg: Stage2Config = cfg.stage2
        self.model, self.ck = build_lavic(cfg, self.scfg, "llm")
        s = self.scfg
        self.builder = PromptBuilder(self.ck.tokenizer, self.ck.image_token_id, s.max_length, s.layout, s.answer, s.use_images)
        if s.use_images:
            if table is None:
                raise ValueError("stage 2 with images needs the item embedding table (lavic embed); or set stage2.use_images=false")
            self.table = VectorTable.load(table)
        else:
            self.table = None
        self.catalog = Catalog.load(catalog_root)
        domain = domain or cfg.dataset.domain
        root = Path(catalog_root) / domain
        train = read_conversations(root / "train.jsonl", (s.candidates_key,))
        self.valid = read_conversations(root / "valid.jsonl", (s.candidates_key,))[: s.eval_limit] if (root / "valid.jsonl").is_file() else []
        missing = self.catalog.missing(i for c in train + self.valid for i in c.candidate_list(s.candidates_key) + c.gt_items)
        if missing:
            raise ValueError(f"{len(missing)} candidate/ground-truth items have no metadata in {catalog_root} (e.g. {missing[:3]})")
        self.samples = (listwise_samples(train, s.candidates_key, s.seed) if s.formulation == "listwise"
                        else pointwise_samples(train, s.candidates_key, s.seed, s.negatives))

    def module(self):
        return self.model

    def train_examples(self):
        return self.samples

    def example_lengths(self):
        return [length_estimate(s, lambda c: self.catalog[c].title) for s in self.samples]

    def lookup(self, ids) -> torch.Tensor:
        return self.table.lookup(ids)

    def _candidates(self, ids) -> list[tuple[str, str]]:
        return [(c, self.catalog[c].title) for c in ids]

    def loss(self, engine, batch):
        if self.scfg.formulation == "pointwise":
            return self._pointwise_loss(engine, batch)
        encoded = [self.builder.listwise(s.conv.turns(), self._candidates(s.candidates), s.answer) for s in batch]
        b = collate(encoded, self.ck.tokenizer.pad_token_id, "right")
        device = next(self.model.parameters()).device
        vectors = self.lookup(b.images).to(device) if b.images else None
        b = b.to(device)
        out = engine(b.input_ids, b.attention_mask, vectors=vectors, labels=b.labels)
        return out.loss, int(b.attention_mask.sum())

    def _pointwise_loss(self, engine, batch: list[PointwiseSample]):
        """``stage2.pointwise_loss``: the balanced yes/no NLL (positives and negatives weigh half each,
        whatever their ratio), the ranking loss (softmax over each sample's candidates of the margin
        log P(yes) - log P(no) that evaluation ranks by, positive as the target), or their sum."""
        requests = [(s.conv.turns(), self._candidates(s.candidates)) for s in batch]
        lp, tokens = engine(fn=pointwise_log_probs, builder=self.builder, requests=requests,
                            lookup=self.lookup if self.scfg.use_images else None, max_rows=None,
                            sharing=self.scfg.prefix_sharing, gradient_checkpointing=self.scfg.engine.gradient_checkpointing)
        kind = self.scfg.pointwise_loss
        loss = lp.new_zeros(())
        if kind in ("yes_no", "both"):
            positive = torch.tensor([p for s in batch for p in s.positive], device=lp.device)
            nll = -torch.where(positive, lp[:, 0], lp[:, 1])
            n_pos, n_neg = int(positive.sum()), int((~positive).sum())
            weight = torch.where(positive, 1.0 / max(n_pos, 1), 1.0 / max(n_neg, 1)) / ((n_pos > 0) + (n_neg > 0))
            loss = loss + (weight * nll).sum()
        if kind in ("ranking", "both"):
            loss = loss + ranking_loss(lp[:, 0] - lp[:, 1], [s.positive for s in batch])
        return loss, tokens

    def validate(self, module, batch_size: int = 8):
        if not self.valid:
            return {}
        module = getattr(module, "module", module)
        key, judged = self.scfg.candidates_key, []
        lookup = self.lookup if self.scfg.use_images else None
        for start in range(0, len(self.valid), batch_size):
            convs = self.valid[start: start + batch_size]
            scores = score_batch(module, self.builder, self.scfg.formulation,
                                 [(c.turns(), self._candidates(c.candidate_list(key))) for c in convs], lookup,
                                 sharing=self.scfg.prefix_sharing)
            for conv, sc in zip(convs, scores):
                cands = conv.candidate_list(key)
                judged.append(Judged.make(conv.conv_id, conv.gt_items, cands, rank_by_scores(cands, sc, conv.gt_items)))
        m = aggregate(judged, ks=(1, 10))
        return {"valid_hr@1": m["hr@1"], "valid_ndcg@10": m["ndcg@10"], "valid_oracle_hr@10": m["oracle_hr@10"],
                "valid_conversations": m["conversations"]}

    def save_adapter(self, module, directory):
        save_adapter(module, directory)
