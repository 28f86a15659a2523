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

import torch

from lavic_ray.config import DatasetConfig, ModelConfig, PromptsConfig, Stage1Config
from lavic_ray.data.dataset import Dataset
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InvalidInput
from lavic_ray.model.alignment import description_targets, word_alignment_loss
from lavic_ray.model.build import prompt_builder
from lavic_ray.model.prompts import collate
from lavic_ray.model.views import ViewCache
from lavic_ray.model.lavic import gathered
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


def _distill_with_alignment(model, inputs: dict, align: tuple[float, dict]) -> torch.Tensor:
    """Stage 1's loss with ``stage1.word_alignment``: the description NLL plus the weighted alignment term, from one
    computation of the vectors (run inside LaViC's forward, so the engine sees one forward)."""
    vectors = model.image_vectors(inputs["pixel_values"], inputs["image_sizes"], inputs["present"])
    nll = model.labelled_loss(model.embed(inputs["input_ids"], vectors), inputs["attention_mask"], inputs["labels"]).loss
    weight, kwargs = align
    return nll + weight * word_alignment_loss(vectors, inputs["present"], **kwargs)


def is_heldout(item_id: str, fraction: float) -> bool:
    """Deterministic item-level split (all images of an item fall on one side)."""
    h = int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


#: stage1.split=heldout: the share of items (by hashed ID) held out for validation
VALID_FRACTION = 0.1
#: stage1.word_alignment's softmax temperature, and the other descriptions each step contrasts against
WORD_ALIGNMENT_TEMPERATURE = 0.1
WORD_ALIGNMENT_NEGATIVES = 1023


class Stage1Task(Task):
    name = "stage1"
    best_metric = "valid_ppl"
    higher_is_better = False

    def __init__(self, scfg: Stage1Config, dataset_cfg: DatasetConfig, model_cfg: ModelConfig, prompts: PromptsConfig):
        self.scfg = scfg
        dataset = Dataset.from_config(dataset_cfg)
        examples = stage1_examples(dataset.catalog())  # teacher descriptions from lavic describe, when set
        if not examples:
            raise InvalidInput(f"no image with a description in {dataset.root}: stage 1 has nothing to distil (run lavic describe)")
        self.model, self.ck = trainable_lavic(model_cfg, scfg, "vision")
        self.builder = prompt_builder(self.ck, prompts, scfg.max_length)
        if self.scfg.split == "files":  # the release's own split: item2meta_train.json trains, item2meta_valid.jsonl validates
            train_ids = set(Catalog.load(dataset.items_train, dataset.images_dir).ids()) if dataset.items_train.is_file() else set()
            heldout = [e.item_id not in train_ids for e in examples]
        else:
            heldout = [is_heldout(e.item_id, VALID_FRACTION) for e in examples]
        self.train_set = [e for e, h in zip(examples, heldout) if not h]
        self.valid_set = [e for e, h in zip(examples, heldout) if h][: self.scfg.eval_limit]
        if not self.train_set:
            raise InvalidInput(f"stage 1 has no training images in {dataset.root} (stage1.split={self.scfg.split})")
        self._views = ViewCache(self.ck.image_processor, missing=model_cfg.missing_image)
        if self.scfg.word_alignment > 0:
            texts = sorted({e.description for e in self.train_set})
            weight = self.model.base.get_input_embeddings().weight
            with torch.no_grad(), gathered([weight]):  # under ZeRO-3 the embeddings are sharded
                emb = weight.detach().clone()
            self._targets = description_targets(texts, self.ck.tokenizer, emb).to(emb.device)
            self._row = {t: i for i, t in enumerate(texts)}
            self._generator = torch.Generator().manual_seed(self.scfg.seed)

    def module(self):
        return self.model

    def train_examples(self):
        return self.train_set

    def example_lengths(self):
        return [len(e.title) + len(e.description) for e in self.train_set]

    def _pixels(self, batch: list[Stage1Example]):
        return self._views.get([e.image for e in batch])

    def _inputs(self, batch: list[Stage1Example]) -> dict:
        """A micro-batch's prompts (labelled descriptions) and pixel views, on the model's device."""
        b = collate([self.builder.stage1(e.title, e.description, e.item_id) for e in batch], self.builder.pad_id, "right")
        px, sizes, present = self._pixels(batch)
        device = next(self.model.parameters()).device
        b = b.to(device)
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels,
                "pixel_values": px.to(device), "image_sizes": sizes.to(device), "present": present.to(device)}

    def _forward(self, fn, batch: list[Stage1Example]):
        x = self._inputs(batch)
        out = fn(**x)
        return out.loss, label_tokens(x["labels"]), int(x["attention_mask"].sum())

    def loss(self, engine, batch):
        if self.scfg.word_alignment > 0:
            return self._aligned_loss(engine, batch)
        loss, _, n_tokens = self._forward(engine, batch)
        return loss, n_tokens

    def _aligned_loss(self, engine, batch):
        x = self._inputs(batch)
        rows = torch.tensor([self._row[e.description] for e in batch], device=x["input_ids"].device)
        align = (self.scfg.word_alignment, {"targets": self._targets, "rows": rows,
                                            "temperature": WORD_ALIGNMENT_TEMPERATURE,
                                            "negatives": WORD_ALIGNMENT_NEGATIVES, "generator": self._generator})
        return engine(fn=_distill_with_alignment, inputs=x, align=align), int(x["attention_mask"].sum())

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
