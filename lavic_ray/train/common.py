"""Pieces both stages use: the training device, the model to train, adapter saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from lavic_ray.config import ModelConfig, StageConfig
from lavic_ray.model.build import build_lavic
from lavic_ray.model.checkpoints import Checkpoint
from lavic_ray.model.lavic import LaViC


def train_device(stage_cfg: StageConfig) -> str | None:
    """This worker's GPU when the stage trains on GPUs (and one is there), else None (CPU)."""
    from lavic_ray.hardware import cuda_available

    if stage_cfg.use_gpu and cuda_available():
        return f"cuda:{torch.cuda.current_device()}"
    return None


def zero3_config(stage_cfg: StageConfig) -> dict | None:
    """The DeepSpeed config of a stage that trains with ZeRO-3 (``engine.zero_stage: 3``, or a DeepSpeed JSON that
    says stage 3), else None."""
    e = stage_cfg.engine
    if e.kind != "deepspeed" or (e.zero_stage != 3 and not e.deepspeed_config):
        return None
    from lavic_ray.train.engine import deepspeed_config

    ds = deepspeed_config(e, stage_cfg.lr, stage_cfg.weight_decay, 0)
    return ds if ds.get("zero_optimization", {}).get("stage") == 3 else None


def trainable_lavic(model_cfg: ModelConfig, stage_cfg: StageConfig, where: Literal["vision", "llm"]) -> tuple[LaViC, Checkpoint]:
    """The model a stage trains: the checkpoint with a fresh LoRA on ``where``, on this worker's device.

    Under ZeRO-3 the checkpoint is built inside ``deepspeed.zero.Init`` (transformers does it while a
    ``HfDeepSpeedConfig`` of stage 3 is alive): each worker materialises only its shard of the frozen weights, so a
    model larger than one GPU can be trained on several, and DeepSpeed, not this function, places the weights."""
    ds = zero3_config(stage_cfg)
    if ds is None:
        return build_lavic(model_cfg, train_lora=where, lora=stage_cfg.lora,
                           gradient_checkpointing=stage_cfg.engine.gradient_checkpointing, device=train_device(stage_cfg))
    from lavic_ray.hardware import collective_backend, cuda_available
    from lavic_ray.train.engine import ensure_process_group

    ensure_process_group(collective_backend(cuda_available()))  # zero.Init shards over the process group
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda_available() else "cpu")
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    zero3 = HfDeepSpeedConfig(ds)  # transformers holds a weak reference: alive while the model is built, and no longer
    try:
        return build_lavic(model_cfg, train_lora=where, lora=stage_cfg.lora,
                           gradient_checkpointing=stage_cfg.engine.gradient_checkpointing, device=None)
    finally:
        del zero3
        unset_hf_deepspeed_config()  # a later model of this process (evaluation, another run) is built whole


def save_adapter(module: torch.nn.Module, directory: Path) -> None:
    """The PEFT adapter of a LaViC module (unwrapping DeepSpeed/DDP). Every rank calls it: under ZeRO-3 the LoRA
    weights are sharded and are gathered (a collective) before rank 0 writes them."""
    from lavic_ray.model.lavic import gathered
    from lavic_ray.train.engine import world

    inner = getattr(module, "module", module)
    with gathered([p for p in inner.parameters() if p.requires_grad]):
        if world()[0] == 0:
            inner.vlm.save_pretrained(str(directory))


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry a loss after the causal shift."""
    return int((labels[:, 1:] != -100).sum())
