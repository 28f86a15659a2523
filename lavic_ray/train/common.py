"""Pieces both stages use: building the wrapped model, batching, adapter saving."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from lavic_ray.config import LavicConfig, StageConfig
from lavic_ray.model.checkpoints import Checkpoint, load_checkpoint
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.lora import add_lora, trainable_summary

log = logging.getLogger(__name__)


def build_lavic(cfg: LavicConfig, stage_cfg: StageConfig, where: Literal["vision", "llm"]) -> tuple[LaViC, Checkpoint]:
    """Load the checkpoint, add the stage's LoRA, wrap in LaViC, move to the worker's device."""
    ck = load_checkpoint(cfg.model.checkpoint, cfg.model.dtype)
    if stage_cfg.engine.gradient_checkpointing:
        ck.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vlm = add_lora(ck.model, where, stage_cfg.lora)
    log.info("LoRA on the %s: %s", "vision tower + projector" if where == "vision" else "language model", trainable_summary(vlm))
    model = LaViC(vlm, ck.image_token_id, cfg.model.feature_layer, cfg.model.scale_vectors)
    if stage_cfg.use_gpu and torch.cuda.is_available():
        model.to(torch.device("cuda", torch.cuda.current_device()))
    return model, ck


def save_adapter(module: torch.nn.Module, directory: Path) -> None:
    """The PEFT adapter of a LaViC module (unwrapping DeepSpeed/DDP)."""
    inner = getattr(module, "module", module)
    inner.vlm.save_pretrained(str(directory))


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry a loss after the causal shift."""
    return int((labels[:, 1:] != -100).sum())
