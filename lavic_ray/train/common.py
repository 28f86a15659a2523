"""Pieces both stages use: the training device, the model to train, adapter saving."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lavic_ray.config import LavicConfig, StageConfig
from lavic_ray.model.build import build_lavic
from lavic_ray.model.checkpoints import Checkpoint
from lavic_ray.model.lavic import LaViC


def train_device(stage_cfg: StageConfig) -> str | None:
    """This worker's GPU when the stage trains on GPUs (and one is there), else None (CPU)."""
    from lavic_ray.hardware import cuda_available

    if stage_cfg.use_gpu and cuda_available():
        return f"cuda:{torch.cuda.current_device()}"
    return None


def trainable_lavic(cfg: LavicConfig, stage_cfg: StageConfig, where: Literal["vision", "llm"]) -> tuple[LaViC, Checkpoint]:
    """The model a stage trains: the checkpoint with a fresh LoRA on ``where``, on this worker's device."""
    return build_lavic(cfg.model, train_lora=where, lora=stage_cfg.lora,
                       gradient_checkpointing=stage_cfg.engine.gradient_checkpointing, device=train_device(stage_cfg))


def save_adapter(module: torch.nn.Module, directory: Path) -> None:
    """The PEFT adapter of a LaViC module (unwrapping DeepSpeed/DDP)."""
    inner = getattr(module, "module", module)
    inner.vlm.save_pretrained(str(directory))


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry a loss after the causal shift."""
    return int((labels[:, 1:] != -100).sum())
