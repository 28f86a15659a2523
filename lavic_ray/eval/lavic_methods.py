"""LaViC as evaluation methods: the full method, its ablations, and free generation.

``lavic`` (stage 2 over the distilled vectors), ``lavic-title-only`` (stage 2
trained without visual vectors), ``lavic-no-distill`` (stage 2 over vectors from
the undistilled vision side) score candidates by likelihood (listwise: the answer
ID's log-likelihood; pointwise: log P(yes) - log P(no)) - whichever formulation
the run was trained with, read from its ``config.yaml``. ``lavic-generate``
decodes an answer freely and parses catalog IDs from it (the paper's protocol).

Each needs ``eval.runs.<method>`` (or ``lavic evaluate --stage2 DIR --table FILE``).
"""

from __future__ import annotations

import logging

from lavic_ray.eval.evaluate import Method, ScoringMethod, register_method

log = logging.getLogger(__name__)


class _LaViCBase:
    needs_items = True

    def _run(self):
        from lavic_ray.model.recommender import Recommender

        runs = self.ctx.config.eval.runs
        if self.name not in runs:
            raise ValueError(f"method {self.name!r} needs a trained stage 2: set eval.runs.{self.name}.stage2_dir (and .table), "
                             f"or pass --stage2 DIR --table FILE")
        r = runs[self.name]
        return Recommender(r.stage2_dir, r.table)

    def _candidates(self, conv, key):
        return [(c, self.ctx.catalog[c].title) for c in conv.candidate_list(key)]


class LaViCScoring(_LaViCBase, ScoringMethod):
    batch_size = 8

    def score(self, convs, key):
        run = self._run()
        out = []
        for start in range(0, len(convs), self.batch_size):
            chunk = convs[start: start + self.batch_size]
            out.extend(run.score([(conv.turns(), self._candidates(conv, key)) for conv in chunk]))
            if (start // self.batch_size + 1) % 10 == 0:
                log.info("%s: scored %d/%d conversations", self.name, start + len(chunk), len(convs))
        return out


for _name in ("lavic", "lavic-title-only", "lavic-no-distill"):
    register_method(_name)(type(_name.replace("-", "_"), (LaViCScoring,), {}))


@register_method("lavic-generate")
class LaViCGenerate(_LaViCBase, Method):
    """Greedy generation after the listwise prompt; any catalog ID in the text counts (ISBNs too)."""

    batch_size = 8

    def rank(self, convs, key):
        from lavic_ray.model.scoring import generate_batch, parse_answer

        run = self._run()
        if run.formulation != "listwise":
            raise ValueError("lavic-generate needs a listwise stage 2 (a pointwise model answers yes/no)")
        ids = set(self.ctx.catalog.ids())
        out = []
        for start in range(0, len(convs), self.batch_size):
            chunk = convs[start: start + self.batch_size]
            cands = [self._candidates(conv, key) for conv in chunk]
            texts = generate_batch(run.model, run.builder, [run.builder.listwise(c.turns(), cs, None) for c, cs in zip(chunk, cands)],
                                   run.lookup)
            out.extend(parse_answer(t, [c for c, _ in cs], ids, letters=run.builder.answer == "letter") for t, cs in zip(texts, cands))
        return out
