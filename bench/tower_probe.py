"""Which vision tower reads a catalog's attributes: a linear probe on LaViC's 5 [CLS] vectors per image.

    python bench/tower_probe.py --catalog DIR --sizes 56 112                        # the pretrained DINOv2 tower
    python bench/tower_probe.py --catalog DIR --sizes 56 --checkpoint WORKDIR/models/small   # and a built model's

For each image (an item's first) the tower's [CLS] on each of the 5 LLaVA-Next views (DINOv2: at layers -2 and
-1; a checkpoint: at its ``vision_feature_layer``, the one LaViC reads), concatenated: the share of their energy
that varies between images, and, standardised, per attribute of ``synth_truth.json`` the 4-fold cross-validated
accuracy of a softmax regression (L2). This is what a linear reader can take from the tower before any LaViC
stage: a hint of what stage 1 can carry into the vectors, not what it does. The catalog must be synthetic
(``lavic synth``); a ``--checkpoint`` is read with its own image processor.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from lavic_ray.model.precision import cpu_summary

def features(tower, image_processor, paths: list[Path], layer: int, batch: int = 16) -> np.ndarray:
    from PIL import Image

    out = []
    with torch.no_grad():
        for b in range(0, len(paths), batch):
            ims = [Image.open(p).convert("RGB") for p in paths[b: b + batch]]
            px = image_processor(ims, return_tensors="pt")["pixel_values"]
            n, views = px.shape[:2]
            cls = tower(px.flatten(0, 1), output_hidden_states=True).hidden_states[layer][:, 0]
            out.append(cls.view(n, views, -1).flatten(1).numpy())
    return np.concatenate(out)


def varying_share(x: np.ndarray, views: int = 5) -> float:
    """The share of the [CLS] vectors' energy that varies between images (per view, averaged): near 0, every image
    gives nearly the same vector, and after the projector's rescaling the LLM sees one vector for all."""
    v = torch.tensor(x).view(len(x), views, -1)
    return round(float((v - v.mean(0)).pow(2).sum(-1).mean() / v.pow(2).sum(-1).mean()), 3)


def probe(x: np.ndarray, labels: dict[str, list[str]], folds: int = 4, l2: float = 1e-2) -> dict[str, float]:
    """Per attribute: the k-fold accuracy of a softmax regression (L-BFGS, L2 ``l2``) on standardised features."""
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-6), dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    out = {}
    for a, y in labels.items():
        classes = sorted(set(y))
        y = torch.tensor([classes.index(v) for v in y])
        right = 0
        for k in range(folds):
            test = order[k::folds]
            train = order[torch.isin(order, test, invert=True)]
            w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
            b = torch.zeros(len(classes), requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]) + l2 * w.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            right += int(((x[test] @ w + b).argmax(1) == y[test]).sum())
        out[a] = round(right / len(x), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True, type=Path, help="a synthetic catalog (lavic synth)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[56, 112], help="DINOv2 view sizes (multiples of 14)")
    ap.add_argument("--checkpoint", help="also probe this checkpoint's tower (e.g. a quickstart's models/small)")
    ap.add_argument("--out", type=Path, help="JSON results")
    args = ap.parse_args()

    from lavic_ray.model.checkpoints import load_checkpoint, make_image_processor, small_vision_tower

    truth = json.loads((args.catalog / "synth_truth.json").read_text())["items"]
    ids = sorted(truth)
    paths = [sorted((args.catalog / "images").glob(f"{i}_*.jpg"))[0] for i in ids]
    attrs = [a for a in truth[ids[0]] if a != "pool"]
    labels = {a: [truth[i][a] for i in ids] for a in attrs}
    rows = {}

    def row(name, tower, processor, layer):
        t = time.monotonic()
        x = features(tower, processor, paths, layer)
        rows[f"{name}, layer {layer}"] = {"varying_share": varying_share(x), **probe(x, labels),
                                          "seconds": round(time.monotonic() - t, 1)}

    for size in args.sizes:
        _, tower, norm = small_vision_tower("dinov2", size)
        for layer in (-2, -1):
            row(f"dinov2 @ {size} px", tower, make_image_processor(size, **norm), layer)
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        row(f"checkpoint {args.checkpoint}", ck.model.model.vision_tower, ck.image_processor,
            int(ck.model.config.vision_feature_layer))
    print("| tower | varying share | " + " | ".join(attrs) + " |\n|---|---|" + "---|" * len(attrs))
    for name, r in rows.items():
        print(f"| {name} | {r['varying_share']:.3f} | " + " | ".join(f"{r[a]:.3f}" for a in attrs) + " |")
    if args.out:
        args.out.write_text(json.dumps({"date": str(date.today()), "cpu": cpu_summary(), "catalog": str(args.catalog),
                                        "images": len(paths), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
