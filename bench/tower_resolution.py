"""What can the small model's vision tower resolve? Its contrastive step alone, at a chosen patch and image size.

Builds the small LLaVA-Next's fresh vision tower (``build_small_base``) and runs only the
small-model build's first step, the CLIP-style pretraining against the frozen sentence encoder
(``contrastive_pretrain_vision``, the quickstart's settings), then saves the checkpoint; read the
tower with ``bench/linear_probe.py`` (its ``cls_*`` figures; the projector here is untrained, so
``vector0_*`` means nothing). Measured with it: the gadgets motif, which the tower cannot tell
apart at the default size, and the same catalog with ``synth.motif_scale=1.6`` (bench/RESULTS.md).

    python bench/tower_resolution.py --catalog CATALOG --out /tmp/tower [--patch-size 14] [--image-size 112]
    python bench/linear_probe.py --model /tmp/tower --catalog CATALOG
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", required=True, help="a catalog in the LaViC layout with descriptions (lavic synth)")
    p.add_argument("--out", required=True, help="where to save the checkpoint")
    p.add_argument("--patch-size", type=int, default=28, help="the tower's patch size (the small model's: 28)")
    p.add_argument("--image-size", type=int, default=112, help="the tower's input size (the small model's: 112)")
    p.add_argument("--epochs", type=int, default=40, help="contrastive epochs (the small model's: 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", default="none", help="small_model.vision_teacher: none or efficientnet-lite0")
    p.add_argument("--teacher-weight", type=float, default=1.0, help="small_model.teacher_weight")
    a = p.parse_args()

    from lavic_ray.data.layout import Catalog
    from lavic_ray.model.checkpoints import build_small_base, save_checkpoint
    from lavic_ray.model.small import contrastive_pretrain_vision

    ck = build_small_base(vision_image_size=a.image_size, seed=a.seed, vision_patch_size=a.patch_size)
    t0 = time.monotonic()
    losses = contrastive_pretrain_vision(ck, Catalog.load(a.catalog), epochs=a.epochs, seed=a.seed,
                                         teacher=a.teacher, teacher_weight=a.teacher_weight)
    seconds = time.monotonic() - t0
    save_checkpoint(ck, a.out)
    print(json.dumps({**vars(a), "seconds": round(seconds), "loss_last": [round(x, 3) for x in losses[-3:]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
