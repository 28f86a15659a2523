"""LoRA placement: the vision tower + projector (stage 1) or the language model (stage 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from lavic_ray import storage
from lavic_ray.config import LoraConfig
from lavic_ray.errors import InputMissing

#: Stage 1: every attention and MLP projection of the vision tower (CLIP's out_proj, DINOv2's o_proj), and both
#: projector layers.
VISION_TARGETS = (r".*vision_tower\..*\.(q_proj|k_proj|v_proj|out_proj|o_proj|fc1|fc2)$"
                  r"|.*multi_modal_projector\.linear_[12]$")
#: Stage 2: every attention and MLP projection of the language model.
LLM_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def add_lora(model: nn.Module, where: Literal["vision", "llm"], cfg: LoraConfig) -> nn.Module:
    """Wrap ``model`` with a LoRA adapter on the vision side or on the LLM; everything else frozen."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    targets = VISION_TARGETS if where == "vision" else LLM_TARGETS
    peft_cfg = PeftLora(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, peft_cfg)


def load_lora(model: nn.Module, adapter_dir: str | Path, trainable: bool = False) -> nn.Module:
    """Attach a saved PEFT adapter to ``model``."""
    from peft import PeftModel

    adapter_dir = storage.fetch(adapter_dir)  # under an object store: downloaded once to this node's mirror
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputMissing(f"no PEFT adapter in {adapter_dir} (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def trainable_summary(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{train:,} trainable of {total:,} parameters ({100 * train / max(total, 1):.2f}%)"
