"""What fits in one A100 40GB: the 7B presets' memory, from parameter counts and DeepSpeed's estimators.

The model is llava-v1.6-mistral-7b's shape (Mistral-7B text model, CLIP ViT-L/14-336 tower,
2-layer projector), built on the ``meta`` device (no weights, no GPU), so parameter counts are
exact; LoRA is attached with the presets' targets to count what trains.

* model states: frozen weights in bf16 (2 bytes each) + the LoRA parameters' states from
  DeepSpeed's ZeRO-2 estimator (``estimate_zero2_model_states_mem_needs``; with and without
  optimizer offload);
* activations, computed for gradient checkpointing with SDPA/flash attention (no s^2 term):
  each layer keeps its input (2 s b h bytes); one layer's working set is recomputed at a time
  (~43 s b h bytes for a Mistral layer: q/k/v with GQA, attention output, SwiGLU's three
  14336-wide tensors); the output layer's logits in bf16 plus their fp32 upcast and gradient
  for the loss (10 s b V bytes); stage 1 adds the vision tower's (checkpointed) activations for
  every view and the full-token forward it does not need (LaViC keeps only each view's [CLS]);
* a 15% allowance for the CUDA context, allocator fragmentation and temporaries.

    python bench/memory_a100.py            # prints the table (markdown), writes bench/results/memory_a100.json

The GPU check of these numbers is bench/gpu_7b.py (peak memory of real steps under a 40 GiB cap).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1024**3
BUDGET_GIB = 40.0
OVERHEAD = 0.15


def llava_7b_config():
    """llava-hf/llava-v1.6-mistral-7b-hf's architecture (its config.json, written out)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=False)
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=32000, image_grid_pinpoints=pinpoints,
                           vision_feature_layer=-2, vision_feature_select_strategy="default")


def counts(stage: str, r: int, alpha: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaNextForConditionalGeneration

    from lavic_ray.model.lora import LLM_TARGETS, VISION_TARGETS

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(llava_7b_config())
    total = sum(p.numel() for p in model.parameters())
    parts = {"vision": model.model.vision_tower, "projector": model.model.multi_modal_projector,
             "language": model.model.language_model}
    out = {f"{k}_params": sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=VISION_TARGETS if stage == "stage1" else LLM_TARGETS))
    out.update(total_params=total, lora_params=sum(p.numel() for p in peft.parameters() if p.requires_grad))
    return out


def activations(stage: str, cfg, seq: int, batch: int) -> dict:
    t, v = cfg.text_config, cfg.vision_config
    s, b, h = seq, batch, t.hidden_size
    out = {"checkpointed layer inputs": 2 * s * b * h * t.num_hidden_layers,
           "one text layer recomputed": 43 * s * b * h,
           "logits (bf16 + fp32 loss + grad)": 10 * s * b * t.vocab_size}
    if stage == "stage1":
        views = b * 5
        tokens = (v.image_size // v.patch_size) ** 2 + 1
        hv = v.hidden_size
        out["vision tower, 5 views per image"] = 2 * views * tokens * hv * v.num_hidden_layers + 40 * views * tokens * hv
    return out


def table(stage: str, seq: int, batch: int, r: int, alpha: int, offload: bool) -> dict:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    cfg = llava_7b_config()
    c = counts(stage, r, alpha)
    frozen = c["total_params"]
    _, lora_gpu = estimate_zero2_model_states_mem_needs(c["lora_params"], cpu_offload=offload)
    rows = {"frozen weights, bf16": 2 * frozen, f"LoRA r{r} states (DeepSpeed ZeRO-2{', offload' if offload else ''})": lora_gpu}
    rows.update(activations(stage, cfg, seq, batch))
    subtotal = sum(rows.values())
    rows["CUDA context, fragmentation, temporaries (15%)"] = OVERHEAD * subtotal
    total = sum(rows.values())
    return {"stage": stage, "seq_len": seq, "micro_batch": batch, "lora_r": r, "offload_optimizer": offload, **c,
            "rows_gib": {k: round(v / GIB, 2) for k, v in rows.items()}, "total_gib": round(total / GIB, 2),
            "fits_40gib": total / GIB <= BUDGET_GIB}


def main() -> int:
    import logging

    logging.disable(logging.WARNING)
    cases = [table("stage1", 160, 4, 8, 32, False), table("stage2", 1024, 1, 16, 32, False),
             table("stage2", 1024, 2, 16, 32, False), table("stage2", 1024, 4, 16, 32, False),
             table("stage2", 1024, 1, 16, 32, True)]
    for c in cases:
        print(f"\n### {c['stage']}: seq {c['seq_len']}, micro-batch {c['micro_batch']}, LoRA r{c['lora_r']} "
              f"({c['lora_params'] / 1e6:.1f} M trainable of {c['total_params'] / 1e9:.2f} B)\n")
        print("| memory | GiB |\n|---|---|")
        for k, v in c["rows_gib"].items():
            print(f"| {k} | {v} |")
        print(f"| **total** | **{c['total_gib']}** ({'fits' if c['fits_40gib'] else 'does NOT fit'} in 40 GiB) |")
    out = REPO / "bench" / "results" / "memory_a100.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cases, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
