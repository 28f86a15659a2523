"""A trained stage-2 run loaded for inference: the model, its prompts and its item vectors.

Evaluation and the serving reranker both go through :class:`Recommender`, so a run
scores the same way offline and online. It reads the run's ``config.yaml`` (model,
formulation, prompts, answer form), applies its LoRA adapter and reads the item
embedding table: nothing here runs the vision tower.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from lavic_ray import storage
from lavic_ray.config import LavicConfig, load_config
from lavic_ray.errors import InputMissing, InvalidInput
from lavic_ray.model.formulations import make_formulation
from lavic_ray.model.scoring import DEFAULT_MAX_ROWS, Request, resolve_sharing

log = logging.getLogger(__name__)


class Recommender:
    """Scores candidate lists with a trained stage 2.

    Args:
        stage2_dir: A stage-2 output directory (``config.yaml`` + ``adapter/``).
        table: The item embedding table (needed unless the run is title-only).
        device: ``cpu``, ``cuda`` or ``cuda:N``; None keeps the run's CPU default.
        dtype: Overrides the run's ``model.dtype`` (``bfloat16`` on GPUs).
        checkpoint: Overrides the run's ``model.checkpoint`` (the same weights moved elsewhere).
        merge_lora: Merge the LoRA adapter into the weights once, here (inference then runs the plain
            model: no adapter matmuls per layer). Off keeps the adapter as trained and validated.

    A run trained with ``stage2.engine.precision: bf16-mixed`` is scored the way it
    was validated during training: under bf16 autocast, fp32 weights (``auto``: so where
    the scoring device runs bf16 natively, as training decided on its own device).
    """

    def __init__(self, stage2_dir: str | Path, table: str | Path | None, device: str | None = None,
                 dtype: str | None = None, checkpoint: str | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                 merge_lora: bool = False):
        from lavic_ray.model.build import build_lavic, prompt_builder
        from lavic_ray.model.table import VectorTable

        d = storage.fetch(stage2_dir)  # a folder, or a stage-2 run in an object store (its URI or mirror path)
        table = storage.local(table) if table is not None else None
        if not (d / "config.yaml").is_file() or not (d / "adapter").is_dir():
            raise InputMissing(f"{d} is not a stage-2 run (expected config.yaml and adapter/ from `lavic recommend`)")
        cfg: LavicConfig = load_config(d / "config.yaml")
        self.cfg = cfg
        s = cfg.stage2
        if s.use_images and table is None:
            raise InvalidInput(f"{d} was trained with images: give its item embedding table")
        self.formulation = make_formulation(s)
        self.model, ck = build_lavic(cfg.model, adapter=d / "adapter", device=device, dtype=dtype, checkpoint=checkpoint,
                                     merge_adapter=merge_lora)
        self.merged = merge_lora
        self.builder = prompt_builder(ck, cfg.prompts, stage2=s)
        self.table = VectorTable.load(table) if s.use_images else None
        self.sharing = s.prefix_sharing
        self.max_rows = max_rows
        self.stage2_dir = d
        from lavic_ray.model.precision import resolve_precision

        precision = resolve_precision(s.engine.precision, next(self.model.parameters()).device)
        self.autocast = precision == "bf16-mixed" and (dtype or cfg.model.dtype) == "float32"

    @property
    def lookup(self):
        return self.table.lookup if self.table is not None else None

    def score(self, requests: Sequence[Request]) -> list[list[float]]:
        """Candidate scores (higher is better) for a batch of ``(turns, [(item_id, title), ...])``."""
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.formulation.score(self.model, self.builder, requests, self.lookup, self.max_rows, self.sharing)

    def generate(self, requests: Sequence[Request], max_new_tokens: int = 16) -> list[str]:
        """The answer decoded greedily after each request's listwise prompt (a listwise run's free generation)."""
        from lavic_ray.model.scoring import generate_batch

        device = next(self.model.parameters()).device
        prompts = [self.builder.listwise(conv, cands, None) for conv, cands in requests]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return generate_batch(self.model, self.builder, prompts, self.lookup, max_new_tokens)

    def describe(self) -> dict:
        s = self.cfg.stage2
        return {"stage2_dir": str(self.stage2_dir), "checkpoint": self.cfg.model.checkpoint, "formulation": self.formulation.name,
                "prefix_sharing": f"{self.sharing} ({resolve_sharing(self.model, self.sharing)})" if self.sharing == "auto"
                else self.sharing, "answer": s.answer, "use_images": s.use_images,
                "table_items": len(self.table) if self.table is not None else 0,
                "device": str(next(self.model.parameters()).device), "threads": torch.get_num_threads(),
                "autocast_bf16": self.autocast, "lora_merged": self.merged}
