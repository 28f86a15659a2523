"""Is each decisive attribute (and the category) linearly readable from a small model's image features?

Fits a logistic regression on the train-pool items of a synthetic catalog and scores it on the
valid/test-pool items, for three features of each item's primary image: the vision tower's [CLS]
of the base view at LaViC's feature layer (-2); the [CLS] of every view side by side (what LaViC's
5 vectors are made from); and the base view's [CLS] through the projector and LaViC's rescaling
(vector 0 of the item's 5), each standardised on the train split; and the mean cosine
between the [CLS] and the mean of the base view's patch tokens, in the tower and through the
projector. The attributes are the catalog manifest's decisive ones (colour and pattern for the
products scheme, motif and build for gadgets). The labels come from ``synth_truth.json`` (never a
model input); this is a diagnostic of the vision side, not part of any pipeline.

With ``--teacher efficientnet-lite0`` it also probes that pretrained network's pooled features of the
same views (``teacher``: the base view; ``teacher_all_views``): what ``small_model.vision_teacher``
gives the tower to learn from.

(scikit-learn comes with sentence-transformers.)

    python bench/linear_probe.py --model lavic_runs/quickstart/models/small --catalog lavic_runs/quickstart/catalog
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved small model (lavic small-model)")
    p.add_argument("--catalog", required=True, help="a synthetic catalog (lavic synth) with synth_truth.json")
    p.add_argument("--teacher", choices=["efficientnet-lite0"], help="also probe this pretrained network's pooled "
                   "features of the same views (small_model.vision_teacher): what the tower could learn from it")
    a = p.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lavic_ray.data.dataset import Dataset
    from lavic_ray.data.layout import Catalog
    from lavic_ray.model.checkpoints import load_checkpoint
    from lavic_ray.model.lavic import LaViC
    from lavic_ray.model.views import pixel_views

    dataset = Dataset(Path(a.catalog), "synthetic")
    truth, vocabulary = dataset.attribute_truth(), dataset.attribute_vocabulary()
    if truth is None or vocabulary is None:
        p.error(f"{a.catalog}: not a synthetic catalog (no attribute truth or manifest)")
    attrs = [*vocabulary, *(["category"] if "category" in next(iter(truth.values())) else [])]
    catalog = Catalog.load(a.catalog)
    ck = load_checkpoint(a.model)
    model = LaViC(ck.model, ck.image_token_id).eval()
    ids = sorted(truth)
    proj, tower = ck.model.model.multi_modal_projector, ck.model.model.vision_tower
    cls, views, vec, near, teach = [], [], [], [], []
    teacher = None
    if a.teacher:
        from lavic_ray.model.vision_teacher import load_teacher, rgb_from_pixel_values

        teacher = load_teacher(a.teacher)
    with torch.no_grad():
        for start in range(0, len(ids), 32):
            items = [catalog[i] for i in ids[start: start + 32]]
            px, sizes, present = pixel_views(ck.image_processor, [it.primary_image.path for it in items])
            hidden = tower(px[:, 0], output_hidden_states=True).hidden_states[model.feature_layer]
            cls.append(hidden[:, 0])
            # every view's [CLS], side by side: what LaViC's 5 vectors are made from
            views.append(torch.cat([hidden[:, 0]] + [tower(px[:, v], output_hidden_states=True).hidden_states[model.feature_layer][:, 0]
                                                     for v in range(1, px.shape[1])], 1))
            vec.append(model.image_vectors(px, sizes, present)[:, 0])
            if teacher is not None:  # the base view, and every view side by side
                teach.append(torch.cat([teacher(rgb_from_pixel_values(px[:, v], ck.image_processor), 1)[0]
                                        for v in range(px.shape[1])], 1))
            # is the [CLS] foreign to the projector, which LLaVA trains on the patch tokens only?
            near.append(torch.stack([F.cosine_similarity(hidden[:, 0], hidden[:, 1:].mean(1)),
                                     F.cosine_similarity(proj(hidden[:, 0]), proj(hidden[:, 1:]).mean(1))], 1))
    train = [k for k, i in enumerate(ids) if truth[i]["pool"] == "train"]
    held = [k for k, i in enumerate(ids) if truth[i]["pool"] != "train"]
    near = torch.cat(near).mean(0)
    out = {"model": a.model, "train_items": len(train), "heldout_items": len(held),
           "cos_cls_mean_patch_tower": round(float(near[0]), 3), "cos_cls_mean_patch_projected": round(float(near[1]), 3)}
    features = [("cls", torch.cat(cls).numpy()), ("cls_all_views", torch.cat(views).numpy()),
                ("vector0", torch.cat(vec).numpy())]
    if teach:
        features += [("teacher", torch.cat(teach)[:, :teacher.dim].numpy()), ("teacher_all_views", torch.cat(teach).numpy())]
    for name, feats in features:
        # standardised on the train split: vector 0 is rescaled to the word-embedding norm (~3 over 576
        # dimensions), where an unscaled regularised regression underfits (seed 1's build read colour 0.444
        # from vector 0 so, 0.906 standardised - the figure that sent an earlier session after its build)
        scaler = StandardScaler().fit(feats[train])
        feats = scaler.transform(feats)
        for attr in attrs:
            y = [truth[i][attr] for i in ids]
            clf = LogisticRegression(max_iter=2000).fit(feats[train], [y[k] for k in train])
            out[f"{name}_{attr}"] = round(float(clf.score(feats[held], [y[k] for k in held])), 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
