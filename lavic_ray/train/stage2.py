"""Stage 2: recommendation fine-tuning (LoRA on the language model).

Each candidate's 5 vectors come from the item embedding table; the vision tower
never runs here. The formulation (:mod:`lavic_ray.model.formulations`) makes the
samples and the loss; validation scores the valid split with the same formulation
that evaluation and serving use.
"""

from __future__ import annotations

from pathlib import Path

from lavic_ray.config import DatasetConfig, ModelConfig, PromptsConfig, Stage2Config
from lavic_ray.data.dataset import Dataset
from lavic_ray.errors import InvalidInput
from lavic_ray.eval.metrics import Judged, aggregate, rank_by_scores
from lavic_ray.model.build import prompt_builder
from lavic_ray.model.formulations import length_estimate, make_formulation
from lavic_ray.model.table import VectorTable
from lavic_ray.train.common import save_adapter, trainable_lavic
from lavic_ray.train.loop import Task


class Stage2Task(Task):
    name = "stage2"
    best_metric = "valid_hr@1"
    higher_is_better = True

    def __init__(self, scfg: Stage2Config, dataset_cfg: DatasetConfig, model_cfg: ModelConfig, prompts: PromptsConfig,
                 table: str | Path | None):
        self.scfg = s = scfg
        self.formulation = make_formulation(s)
        if s.use_images and table is None:
            raise InvalidInput("stage 2 with images needs the item embedding table (lavic embed); or set stage2.use_images=false")
        dataset = Dataset.from_config(dataset_cfg)
        self.catalog = dataset.catalog()
        train = dataset.conversations("train", (s.candidates_key,))
        self.valid = dataset.conversations("valid", (s.candidates_key,), required=False)[: s.eval_limit]
        missing = self.catalog.missing(i for c in train + self.valid for i in c.candidate_list(s.candidates_key) + c.gt_items)
        if missing:
            raise InvalidInput(f"{len(missing)} candidate/ground-truth items have no metadata in {dataset.root} (e.g. {missing[:3]})")
        self.table = VectorTable.load(table) if s.use_images else None
        self.model, self.ck = trainable_lavic(model_cfg, s, "llm")
        self.builder = prompt_builder(self.ck, prompts, stage2=s)
        self.samples = self.formulation.samples(train, s.candidates_key, s.seed,
                                                self.table.similarity if self.table is not None else None)

    def module(self):
        return self.model

    def train_examples(self):
        return self.samples

    def example_lengths(self):
        return [length_estimate(s, lambda c: self.catalog[c].title) for s in self.samples]

    @property
    def lookup(self):
        return self.table.lookup if self.table is not None else None

    def _candidates(self, ids) -> list[tuple[str, str]]:
        return [(c, self.catalog[c].title) for c in ids]

    def loss(self, engine, batch):
        return self.formulation.loss(engine, self.builder, batch, self._candidates, self.lookup)

    def validate(self, module, batch_size: int = 8):
        if not self.valid:
            return {}
        module = getattr(module, "module", module)
        key, judged = self.scfg.candidates_key, []
        for start in range(0, len(self.valid), batch_size):
            convs = self.valid[start: start + batch_size]
            scores = self.formulation.score(module, self.builder, [(c.context, self._candidates(c.candidate_list(key))) for c in convs],
                                            self.lookup, sharing=self.scfg.prefix_sharing)
            for conv, sc in zip(convs, scores):
                cands = conv.candidate_list(key)
                judged.append(Judged.make(conv.conv_id, conv.gt_items, cands, rank_by_scores(cands, sc, conv.gt_items)))
        m = aggregate(judged, ks=(1, 10))
        return {"valid_hr@1": m["hr@1"], "valid_ndcg@10": m["ndcg@10"], "valid_oracle_hr@10": m["oracle_hr@10"],
                "valid_chance_hr@1": m["chance_hr@1"], "valid_conversations": m["conversations"]}

    def save_adapter(self, module, directory):
        save_adapter(module, directory)
