"""bf16 autocast against fp32 on this machine: what ``engine.precision: auto`` decides, and why.

One training step of the small model's language model (SmolLM2-135M inside the small LLaVA-Next,
``build_small_base``: no catalog or build needed) on a batch of random tokens - forward, backward -
timed in fp32 and under bf16 autocast (the stages' ``bf16-mixed``), on this process's threads.
Prints seconds per step for each, their ratio and what ``auto`` resolves to here.

    python bench/precision_speed.py [--batch 8] [--length 160] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="sequences a step (stage 1's micro batch: 8)")
    p.add_argument("--length", type=int, default=160, help="tokens a sequence (stage 1's max_length: 160)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision, after one warm-up step")
    a = p.parse_args()

    import torch

    from lavic_ray.model.checkpoints import build_small_base
    from lavic_ray.model.precision import bf16_is_native, cpu_summary, resolve_precision

    lm = build_small_base().model.model.language_model
    for q in lm.parameters():
        q.requires_grad_(True)
    ids = torch.randint(0, lm.config.vocab_size, (a.batch, a.length), generator=torch.Generator().manual_seed(0))
    out = {"cpu": cpu_summary(), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_is_native("cpu"),
           "auto_resolves_to": resolve_precision("auto", "cpu"), "batch": a.batch, "length": a.length}
    for name, autocast in (("fp32", False), ("bf16-mixed", True)):
        times = []
        for step in range(a.steps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = lm(input_ids=ids).last_hidden_state.float().pow(2).mean()
            loss.backward()
            lm.zero_grad(set_to_none=True)
            if step:
                times.append(time.perf_counter() - t0)
        out[f"{name}_s_per_step"] = round(sum(times) / len(times), 3)
        print(json.dumps({name: out[f"{name}_s_per_step"]}), flush=True)
    out["bf16_mixed_over_fp32"] = round(out["bf16-mixed_s_per_step"] / out["fp32_s_per_step"], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
