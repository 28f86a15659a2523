"""LaViC as evaluation methods: the full method, its ablations, and free generation.

One scoring method per stage-2 variant (:data:`lavic_ray.variants.VARIANTS`: ``lavic``,
``lavic-title-only``, ``lavic-no-distill``) ranks candidates by likelihood with whichever
formulation the run was trained with, read from its ``config.yaml``. ``lavic-generate``
decodes an answer freely from the ``lavic`` run and parses catalog IDs from it (the
paper's protocol).

Each needs ``eval.runs.<method>`` (or ``lavic evaluate --stage2 DIR --table FILE``).
"""

from __future__ import annotations

import logging

from lavic_ray import console
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.methods import Method, ScoringMethod
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)


class _LaViCBase:
    needs_items = True
    #: the stage-2 run it uses when ``eval.runs`` has none under its own name
    default_run: str | None = None

    def _run(self):
        from lavic_ray.model.recommender import Recommender

        runs = self.ctx.config.eval.runs
        name = self.name if self.name in runs else self.default_run
        if name not in runs:
            raise InvalidInput(f"method {self.name!r} needs a trained stage 2: set eval.runs.{self.name}.stage2_dir (and .table), "
                               f"or pass --stage2 DIR --table FILE")
        r = runs[name]
        return Recommender(r.stage2_dir, r.table)

    def _candidates(self, conv, key):
        return [(c, self.ctx.catalog[c].title) for c in conv.candidate_list(key)]


class LaViCScoring(_LaViCBase, ScoringMethod):
    """A trained stage-2 variant, scoring every candidate by likelihood."""

    batch_size = 8

    def score(self, convs, key):
        run = self._run()
        out = []
        with console.get().progress(len(convs), f"evaluate {self.name}", "conversation") as bar:
            for start in range(0, len(convs), self.batch_size):
                chunk = convs[start: start + self.batch_size]
                out.extend(run.score([(conv.context, self._candidates(conv, key)) for conv in chunk]))
                bar.update(len(chunk))
                if (start // self.batch_size + 1) % 10 == 0:
                    log.info("%s: scored %d/%d conversations", self.name, start + len(chunk), len(convs))
        return out


class LaViCGenerate(_LaViCBase, Method):
    """Greedy generation after the listwise prompt (``eval.generate``: tokens, and the parser: any catalog ID,
    ISBNs too, or the reference's regex)."""

    name = "lavic-generate"
    default_run = "lavic"
    batch_size = 8

    def rank(self, convs, key):
        from lavic_ray.model.scoring import generate_batch, parse_answer

        run = self._run()
        if not run.formulation.generates_ids:
            raise InvalidInput(f"lavic-generate needs a listwise stage 2 (a {run.formulation.name} model does not answer an ID)")
        ids = set(self.ctx.catalog.ids())
        g = self.ctx.config.eval.generate
        out = []
        for start in range(0, len(convs), self.batch_size):
            chunk = convs[start: start + self.batch_size]
            cands = [self._candidates(conv, key) for conv in chunk]
            texts = generate_batch(run.model, run.builder, [run.builder.listwise(c.context, cs, None) for c, cs in zip(chunk, cands)],
                                   run.lookup, g.max_new_tokens)
            out.extend(parse_answer(t, [c for c, _ in cs], ids, letters=run.builder.answer == "letter", pattern=g.id_pattern)
                       for t, cs in zip(texts, cands))
        return out


#: The LaViC methods by name: one per stage-2 variant, and free generation.
LAVIC_METHODS: dict[str, type[Method]] = {
    **{v: type(v.replace("-", "_"), (LaViCScoring,), {"name": v, "__doc__": VARIANTS[v].summary}) for v in VARIANTS},
    LaViCGenerate.name: LaViCGenerate,
}
