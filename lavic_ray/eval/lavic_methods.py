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
from pathlib import Path

from lavic_ray.config import load_config
from lavic_ray.eval.evaluate import Method, ScoringMethod, register_method

log = logging.getLogger(__name__)


class _LoadedRun:
    def __init__(self, stage2_dir: str | Path, table: str | None):
        from lavic_ray.model.checkpoints import load_checkpoint
        from lavic_ray.model.lavic import LaViC
        from lavic_ray.model.lora import load_lora
        from lavic_ray.model.prompts import PromptBuilder
        from lavic_ray.model.table import VectorTable

        d = Path(stage2_dir)
        cfg = load_config(d / "config.yaml")
        self.cfg = cfg
        s = cfg.stage2
        ck = load_checkpoint(cfg.model.checkpoint, cfg.model.dtype)
        vlm = load_lora(ck.model, d / "adapter")
        self.model = LaViC(vlm, ck.image_token_id, cfg.model.feature_layer, cfg.model.scale_vectors).eval()
        self.builder = PromptBuilder(ck.tokenizer, ck.image_token_id, s.max_length, s.layout, s.answer, s.use_images)
        self.table = VectorTable.load(table) if s.use_images else None
        if s.use_images and table is None:
            raise ValueError(f"{d} was trained with images: give its item embedding table")

    @property
    def lookup(self):
        return self.table.lookup if self.table is not None else None


class _LaViCBase:
    needs_items = True

    def _run(self) -> _LoadedRun:
        runs = self.ctx.config.eval.runs
        if self.name not in runs:
            raise ValueError(f"method {self.name!r} needs a trained stage 2: set eval.runs.{self.name}.stage2_dir (and .table), "
                             f"or pass --stage2 DIR --table FILE")
        r = runs[self.name]
        return _LoadedRun(r.stage2_dir, r.table)

    def _candidates(self, conv, key):
        return [(c, self.ctx.catalog[c].title) for c in conv.candidate_list(key)]


class LaViCScoring(_LaViCBase, ScoringMethod):
    def score(self, convs, key):
        from lavic_ray.model.scoring import score_listwise, score_pointwise

        run = self._run()
        fn = score_listwise if run.cfg.stage2.formulation == "listwise" else score_pointwise
        out = []
        for n, conv in enumerate(convs, start=1):
            out.append(fn(run.model, run.builder, conv.turns(), self._candidates(conv, key), run.lookup))
            if n % 50 == 0:
                log.info("%s: scored %d/%d conversations", self.name, n, len(convs))
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
        if run.cfg.stage2.formulation != "listwise":
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
