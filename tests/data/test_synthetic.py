"""The synthetic catalog: layout, determinism, and the 'decisive attribute only in the image' property."""

import hashlib
import json
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from lavic_ray.config import SynthConfig
from lavic_ray.data.layout import Catalog
from lavic_ray.data.render import COLOURS, PATTERNS
from lavic_ray.data.synthetic import ATTRIBUTE_WORDS, GT_IN_CANDIDATES, MANIFEST_FILE, TRUTH_FILE, generate, make_item_ids
from lavic_ray.data.validate import validate_root


def tree_digest(root):
    h = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def load(root, split):
    return [json.loads(x) for x in (root / "synthetic" / f"{split}.jsonl").read_text().splitlines()]


def truth(root):
    return json.loads((root / TRUTH_FILE).read_text())["items"]


def test_layout_is_valid_and_complete(synth_root, synth_cfg):
    report = validate_root(synth_root, images="decode")
    assert report.ok and not report.problems, report.render()
    catalog = Catalog.load(synth_root)
    assert len(catalog) == synth_cfg.items
    assert all(it.images and it.primary_image.description for it in catalog)
    counts = {s: len(load(synth_root, s)) for s in ("train", "valid", "test")}
    assert counts == {"train": 150, "valid": 20, "test": 30}
    manifest = json.loads((synth_root / MANIFEST_FILE).read_text())
    assert manifest["conversations"] == counts and manifest["seed"] == 7


def test_images_give_llava_next_five_views(synth_root):
    for p in list((synth_root / "images").glob("*.jpg"))[:20]:
        with Image.open(p) as im:
            w, h = im.size
            assert w >= 672 and h >= 672 and abs(w - h) <= 0.1 * max(w, h)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, sbert):
    cfg = SynthConfig(seed=11, items=96, conversations=40)
    generate(cfg, tmp_path / "a", retriever=sbert)
    generate(cfg, tmp_path / "b", retriever=sbert)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    generate(cfg.model_copy(update={"seed": 12}), tmp_path / "c", retriever=sbert)
    assert tree_digest(tmp_path / "a")["synthetic/train.jsonl"] != tree_digest(tmp_path / "c")["synthetic/train.jsonl"]


def test_refuses_to_overwrite(tmp_path, sbert):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("user data")
    cfg = SynthConfig(items=96, conversations=40)
    with pytest.raises(FileExistsError, match="not empty"):
        generate(cfg, tmp_path / "mine", retriever=sbert)
    with pytest.raises(FileExistsError, match="refusing"):
        generate(cfg, tmp_path / "mine", force=True, retriever=sbert)
    assert (tmp_path / "mine" / "data.txt").read_text() == "user data"


def test_ids_look_like_asins_and_isbns():
    import random

    ids = make_item_ids(500, 0.2, random.Random(0))
    assert len(set(ids)) == 500 and all(len(i) == 10 for i in ids)
    asins = [i for i in ids if i.startswith("B0")]
    isbns = [i for i in ids if re.fullmatch(r"\d{9}[\dX]", i)]
    assert len(asins) + len(isbns) == 500 and len(isbns) == 100
    for i in isbns:  # ISBN-10 check digit
        total = sum((10 - n) * (10 if c == "X" else int(c)) for n, c in enumerate(i))
        assert total % 11 == 0


def test_titles_never_name_a_decisive_attribute(synth_root):
    for it in Catalog.load(synth_root):
        words = set(re.findall(r"[a-z]+", it.title.lower()))
        assert not words & ATTRIBUTE_WORDS, it.title


def test_descriptions_and_requests_state_the_attributes(synth_root):
    t = truth(synth_root)
    for it in Catalog.load(synth_root):
        desc = it.primary_image.description.lower()
        a = t[it.item_id]
        assert a["colour"] in desc and a["emblem"] in desc and a["category"] in desc
        assert it.title not in it.primary_image.description
    for split in ("train", "valid", "test"):
        for row in load(synth_root, split):
            a = t[row["gt_items"][0]]
            text = row["context"].lower()
            assert text.startswith("<submission>") and "<comment>" in text
            assert a["colour"] in text
            assert {"solid": "no pattern", "striped": "stripe", "polka-dot": "polka", "checkered": "checkered"}[a["pattern"]] in text


def test_candidate_lists_are_fair(synth_root, synth_cfg):
    t = truth(synth_root)
    key = lambda i: (t[i]["category"], t[i]["colour"], t[i]["pattern"])  # noqa: E731
    for split in ("train", "valid", "test"):
        rows = load(synth_root, split)
        for row in rows:
            cands, gts = row["candidates_st"], row["gt_items"]
            assert len(cands) == 10 and len(set(cands)) == 10
            assert len({key(g) for g in gts}) == 1
            # every same-request item of the pool is a ground truth: no distractor is an equally good answer
            assert all(key(c) != key(gts[0]) for c in cands if c not in gts)
            assert all(t[c]["pool"] == split for c in cands + gts)
        share = sum(any(g in r["candidates_st"] for g in r["gt_items"]) for r in rows) / len(rows)
        if split == "train":
            assert share == 1.0
        else:
            assert share == pytest.approx(GT_IN_CANDIDATES, abs=1 / len(rows))


def test_heldout_ground_truth_never_occurs_in_training(synth_root):
    train_ids = {i for r in load(synth_root, "train") for i in r["gt_items"] + r["candidates_st"] + r["context_items"]}
    for split in ("valid", "test"):
        for r in load(synth_root, split):
            assert not set(r["gt_items"]) & train_ids


# ---------------------------------------------------------------- the property that makes it a visual benchmark


def _pixel_features(path):
    """A deliberately simple 'model that sees the image': colour of saturated pixels and pattern texture stats."""
    a = np.asarray(Image.open(path).convert("RGB").resize((168, 168)), dtype=np.float32)
    sat = (a.max(-1) - a.min(-1)) > 60
    ys, xs = np.nonzero(sat)
    colour = np.median(a[sat], axis=0)
    box = sat[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32)
    v, h = np.abs(np.diff(box, axis=0)).mean(), np.abs(np.diff(box, axis=1)).mean()
    return colour, np.array([box.mean(), v, h, math.log((v + 1e-3) / (h + 1e-3))])


def _title_model(train_items, t):
    """Naive Bayes over title words -> (colour, pattern), fitted on the training pool."""
    counts = defaultdict(Counter)
    prior = Counter()
    for it in train_items:
        label = (t[it.item_id]["colour"], t[it.item_id]["pattern"])
        prior[label] += 1
        for w in set(re.findall(r"[a-z0-9]+", it.title.lower())):
            counts[w][label] += 1
    labels = [(c, p) for c in COLOURS for p in PATTERNS]

    def log_p(title, label):
        s = math.log(prior[label] + 1)
        for w in set(re.findall(r"[a-z0-9]+", title.lower())):
            s += math.log((counts[w][label] + 1) / (prior[label] + 2))
        return s

    return lambda title, label: log_p(title, label) if label in labels else -math.inf


def test_title_only_is_at_chance_while_the_image_decides(synth_root):
    """Among same-category candidates, a title model learned from training items does no better
    than chance, while a tiny image model (pixel features, nearest centroid) approaches 1.0."""
    t = truth(synth_root)
    catalog = Catalog.load(synth_root)
    train_items = [it for it in catalog if t[it.item_id]["pool"] == "train"]
    feats = {it.item_id: _pixel_features(it.primary_image.path) for it in catalog}

    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    F = np.array([feats[it.item_id][1] for it in train_items])
    mu, sd = F.mean(0), F.std(0) + 1e-6
    centroids = {p: ((np.array([feats[it.item_id][1] for it in train_items if t[it.item_id]["pattern"] == p]) - mu) / sd).mean(0)
                 for p in PATTERNS}

    def seen(item_id):
        colour = list(COLOURS)[int(np.argmin(((palette - feats[item_id][0]) ** 2).sum(1)))]
        z = (feats[item_id][1] - mu) / sd
        return colour, min(PATTERNS, key=lambda p: float(((z - centroids[p]) ** 2).sum()))

    title_score = _title_model(train_items, t)
    hits_img, hits_title, chance, n = 0.0, 0.0, 0.0, 0
    for split in ("valid", "test"):
        for row in load(synth_root, split):
            gts = set(row["gt_items"])
            target = t[row["gt_items"][0]]
            want = (target["colour"], target["pattern"])
            same = [c for c in row["candidates_st"] if t[c]["category"] == target["category"]]
            if not gts & set(same) or len(same) < 2:
                continue
            n += 1
            chance += len(gts & set(same)) / len(same)
            img_rank = sorted(same, key=lambda c: (-(sum(a == b for a, b in zip(seen(c), want))), c in gts))
            title_rank = sorted(same, key=lambda c: (-title_score(catalog[c].title, want), c in gts))
            hits_img += img_rank[0] in gts
            hits_title += title_rank[0] in gts
    assert n >= 30
    chance, hr_img, hr_title = chance / n, hits_img / n, hits_title / n
    print(f"same-category HR@1 over {n} conversations: image {hr_img:.3f}, title {hr_title:.3f}, chance {chance:.3f}")
    assert hr_img >= 0.85, (hr_img, chance)
    assert hr_title <= chance + 0.15, (hr_title, chance)


def test_too_small_a_catalog_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="raise synth.items"):
        generate(SynthConfig(items=48, conversations=40), tmp_path / "x", retriever=None)  # refused before retrieval
    assert not (tmp_path / "x" / "images").exists() or not any((tmp_path / "x" / "images").iterdir())
