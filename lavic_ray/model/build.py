"""The one way to assemble LaViC from the configuration: checkpoint, adapters, LoRA, dtype, device, prompts.

Every step that needs the model - stage 1 and stage 2 training, the item embedding
table, the stage-1 probe, evaluation and the Serve reranker - calls :func:`build_lavic`
and :func:`prompt_builder`, so all of them load the same model the same way (feature
layer, vector scaling, dtype from ``model.*``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from lavic_ray.config import LoraConfig, ModelConfig, PromptsConfig, Stage2Config
from lavic_ray.model.checkpoints import Checkpoint, load_checkpoint
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.lora import add_lora, load_lora, trainable_summary
from lavic_ray.model.prompts import PromptBuilder

log = logging.getLogger(__name__)


def build_lavic(model_cfg: ModelConfig, *, adapter: str | Path | None = None,
                train_lora: Literal["vision", "llm"] | None = None, lora: LoraConfig | None = None,
                gradient_checkpointing: bool = False, device: str | None = None, dtype: str | None = None,
                checkpoint: str | None = None, merge_adapter: bool = False) -> tuple[LaViC, Checkpoint]:
    """Load the checkpoint and wrap it in LaViC.

    Args:
        model_cfg: The ``model`` section (checkpoint, dtype, feature layer, vector scaling).
        adapter: A saved PEFT adapter to apply (a stage-1 vision adapter, or a stage-2 LLM adapter).
        train_lora: Add a fresh, trainable LoRA on the ``vision`` side (stage 1) or the ``llm`` (stage 2);
            everything else is frozen.
        lora: Its rank, alpha and dropout (with ``train_lora``).
        gradient_checkpointing: Enable it on the checkpoint (training).
        device: Where the model goes (``cpu``, ``cuda``, ``cuda:N``; None: CPU).
        dtype: Overrides ``model.dtype``.
        checkpoint: Overrides ``model.checkpoint`` (the same weights elsewhere).
        merge_adapter: Merge ``adapter`` into the weights (``merge_and_unload``) instead of keeping it as
            a PEFT wrapper: for inference only.

    Returns:
        The LaViC module (in eval mode unless a LoRA is trained) and the loaded checkpoint
        (tokenizer, image processor).
    """
    if train_lora is not None and lora is None:
        raise ValueError("train_lora needs the LoRA settings (lora=...)")
    if merge_adapter and train_lora is not None:
        raise ValueError("merge_adapter is for inference: it cannot go with train_lora")
    ck = load_checkpoint(checkpoint or model_cfg.checkpoint, dtype or model_cfg.dtype,
                         device if device not in (None, "cpu") else None)
    if gradient_checkpointing:
        ck.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vlm = ck.model
    if adapter is not None:
        vlm = load_lora(vlm, adapter)
        if merge_adapter:
            vlm = vlm.merge_and_unload()
    if train_lora is not None:
        vlm = add_lora(vlm, train_lora, lora)
        log.info("LoRA on the %s: %s", "vision tower + projector" if train_lora == "vision" else "language model",
                 trainable_summary(vlm))
    model = LaViC(vlm, ck.image_token_id, model_cfg.feature_layer, model_cfg.scale_vectors, model_cfg.empty_views)
    if train_lora is None:
        model.eval()
    return model, ck


def prompt_builder(ck: Checkpoint, prompts: PromptsConfig, max_length: int = 1024, stage2: Stage2Config | None = None,
                   use_images: bool | None = None) -> PromptBuilder:
    """The prompt builder for a loaded checkpoint and the ``prompts`` section: stage 1 (``stage2=None``) or
    stage 2 with its answer form and ``use_images`` (overridable, as the title-only variant does)."""
    if stage2 is None:
        return PromptBuilder(ck.tokenizer, ck.image_token_id, max_length, prompts)
    return PromptBuilder(ck.tokenizer, ck.image_token_id, stage2.max_length, prompts, stage2.answer,
                         stage2.use_images if use_images is None else use_images)
