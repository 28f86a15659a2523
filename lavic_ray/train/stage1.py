"""Stage 1: visual knowledge self-distillation.

LoRA on the vision tower + projector only. Objective: the NLL of the teacher
description given the title and the image's 5 vectors, through the frozen LLM.
Validation perplexity (token-weighted) on held-out items each epoch; the adapter
with the lowest perplexity is kept.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from lavic_ray.config import LavicConfig
from lavic_ray.data.dataset import Dataset
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InvalidInput
from lavic_ray.model.build import prompt_builder
from lavic_ray.model.prompts import collate
from lavic_ray.model.views import ViewCache
from lavic_ray.train.common import label_tokens, save_adapter, trainable_lavic
from lavic_ray.train.loop import Task


@dataclass(frozen=True)
class Stage1Example:
    item_id: str
    title: str
    description: str
    image: Path | None


def stage1_examples(catalog: Catalog) -> list[Stage1Example]:
    """One example per image that has a teacher description."""
    return [
        Stage1Example(it.item_id, it.title, im.description, im.path)
        for it in catalog for im in it.images if im.description
    ]


def is_heldout(item_id: str, fraction: float) -> bool:
    """Deterministic item-level split (all images of an item fall on one side)."""
    h = int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


class Stage1Task(Task):
    name = "stage1"
    best_metric = "valid_ppl"
    higher_is_better = False

    def __init__(self, cfg: LavicConfig):
        self.cfg = cfg
        self.scfg = cfg.stage1
        dataset = Dataset.from_config(cfg.dataset)
        examples = stage1_examples(dataset.catalog())  # teacher descriptions from lavic describe, when set
        if not examples:
            raise InvalidInput(f"no image with a description in {dataset.root}: stage 1 has nothing to distil (run lavic describe)")
        self.model, self.ck = trainable_lavic(cfg, self.scfg, "vision")
        self.builder = prompt_builder(self.ck, cfg.prompts, self.scfg.max_length)
        if self.scfg.split == "files":  # the release's own split: item2meta_train.json trains, item2meta_valid.jsonl validates
            train_ids = set(Catalog.load(dataset.items_train, dataset.images_dir).ids()) if dataset.items_train.is_file() else set()
            heldout = [e.item_id not in train_ids for e in examples]
        else:
            heldout = [is_heldout(e.item_id, self.scfg.valid_fraction) for e in examples]
        self.train_set = [e for e, h in zip(examples, heldout) if not h]
        self.valid_set = [e for e, h in zip(examples, heldout) if h][: self.scfg.eval_limit]
        if not self.train_set:
            raise InvalidInput(f"stage 1 has no training images in {dataset.root} (stage1.split={self.scfg.split})")
        self._views = ViewCache(self.ck.image_processor, missing=cfg.model.missing_image)

    def module(self):
        return self.model

    def train_examples(self):
        return self.train_set

    def example_lengths(self):
        return [len(e.title) + len(e.description) for e in self.train_set]

    def _pixels(self, batch: list[Stage1Example]):
        return self._views.get([e.image for e in batch])

    def _forward(self, fn, batch: list[Stage1Example]):
        b = collate([self.builder.stage1(e.title, e.description, e.item_id) for e in batch], self.builder.pad_id, "right")
        px, sizes, present = self._pixels(batch)
        device = next(self.model.parameters()).device
        b = b.to(device)
        out = fn(b.input_ids, b.attention_mask, labels=b.labels, pixel_values=px.to(device), image_sizes=sizes.to(device),
                 present=present.to(device))
        return out.loss, label_tokens(b.labels), int(b.attention_mask.sum())

    def loss(self, engine, batch):
        loss, _, n_tokens = self._forward(engine, batch)
        return loss, n_tokens

    def validate(self, module):
        if not self.valid_set:
            return {}
        total, count = 0.0, 0
        mb = self.scfg.engine.micro_batch_size
        for i in range(0, len(self.valid_set), mb):
            loss, n, _ = self._forward(self.model, self.valid_set[i: i + mb])
            total += float(loss) * n
            count += n
        nll = total / max(count, 1)
        return {"valid_loss": nll, "valid_ppl": math.exp(min(nll, 50.0)), "valid_examples": len(self.valid_set)}

    def save_adapter(self, module, directory):
        save_adapter(module, directory)
