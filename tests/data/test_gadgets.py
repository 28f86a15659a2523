"""The second synthetic catalog setting (``synth.scheme=gadgets``): other objects, decisive motif and build,
a distractor colour, 336 px images - and the probe's vocabulary, read back from the manifest, on both schemes."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from lavic_ray.config import SynthConfig
from lavic_ray.data import gadgets
from lavic_ray.data.dataset import Dataset
from lavic_ray.data.layout import Catalog
from lavic_ray.data.synthetic import MANIFEST_FILE, TRUTH_FILE, generate
from lavic_ray.data.validate import validate_root
from lavic_ray.eval.probe import first_mentioned


@pytest.fixture(scope="module")
def gadgets_root(tmp_path_factory, sbert):
    root = tmp_path_factory.mktemp("gadgets")
    generate(SynthConfig(seed=5, items=192, conversations=200, scheme="gadgets"), root, retriever=sbert)
    return root


@pytest.fixture(scope="module")
def build_colour_root(tmp_path_factory, sbert):
    root = tmp_path_factory.mktemp("gadgets_bc")
    generate(SynthConfig(seed=5, items=192, conversations=200, scheme="gadgets", decisive=["build", "colour"]), root,
             retriever=sbert)
    return root


def _rows(root, split):
    return [json.loads(x) for x in (root / "synthetic" / f"{split}.jsonl").read_text().splitlines()]


def test_layout_images_and_manifest(gadgets_root):
    report = validate_root(gadgets_root, images="decode")
    assert report.ok and not report.problems, report.render()
    m = json.loads((gadgets_root / MANIFEST_FILE).read_text())
    assert m["scheme"] == "gadgets" and m["image_size"] == 336 and m["decisive_attributes"] == ["motif", "build"]
    assert set(m["attributes"]["category"]) == set(gadgets.SILHOUETTES)
    for p in list((gadgets_root / "images").glob("*.jpg"))[:10]:
        with Image.open(p) as im:
            assert im.size == (336, 336)


def test_titles_say_nothing_of_the_look_and_requests_never_ask_for_the_colour(gadgets_root):
    t = json.loads((gadgets_root / TRUTH_FILE).read_text())["items"]
    for it in Catalog.load(gadgets_root):
        assert not set(re.findall(r"[a-z]+", it.title.lower())) & gadgets.ATTRIBUTE_WORDS, it.title
        desc = it.primary_image.description.lower()
        a = t[it.item_id]
        assert a["motif"] in desc and a["colour"] in desc and a["category"] in desc
    for split in ("train", "valid", "test"):
        for row in _rows(gadgets_root, split):
            a = t[row["gt_items"][0]]
            text = row["context"].lower()
            assert a["motif"] in text and gadgets.BUILD_WORDS[a["build"]][0] in text
            assert not any(c in text for c in gadgets.BODY_COLOURS)  # a distractor, never a cue


def test_candidate_lists_are_fair(gadgets_root):
    t = json.loads((gadgets_root / TRUTH_FILE).read_text())["items"]
    key = lambda i: (t[i]["category"], t[i]["motif"], t[i]["build"])  # noqa: E731
    for split in ("train", "valid", "test"):
        for row in _rows(gadgets_root, split):
            gts = row["gt_items"]
            assert len({key(g) for g in gts}) == 1 and len(gts) <= 4
            assert all(key(c) != key(gts[0]) for c in row["candidates_st"] if c not in gts)


def test_the_build_is_in_the_picture(gadgets_root):
    """The build (slim / standard / wide) is the shape of the object's silhouette: a box-aspect threshold
    fitted on nothing reads it from the pixels."""
    t = json.loads((gadgets_root / TRUTH_FILE).read_text())["items"]
    hits = n = 0
    for it in list(Catalog.load(gadgets_root))[:90]:
        a = np.asarray(Image.open(it.primary_image.path).convert("L"), dtype=np.float32)
        ys, xs = np.nonzero(a < 200)  # the body, its outline and ink (the background is light)
        aspect = (xs.max() - xs.min()) / (ys.max() - ys.min())
        want = t[it.item_id]["build"]
        seen = "slim" if aspect < 0.68 else "standard" if aspect < 0.95 else "wide"
        hits += seen == want
        n += 1
    assert hits / n >= 0.8, hits / n


def test_decisive_build_and_colour_asks_for_those_and_never_names_the_motif(build_colour_root):
    m = json.loads((build_colour_root / MANIFEST_FILE).read_text())
    assert m["decisive_attributes"] == ["build", "colour"] and set(m["vocabulary"]) == {"build", "colour"}
    t = json.loads((build_colour_root / TRUTH_FILE).read_text())["items"]
    motif_words = {w for ws in gadgets.MOTIF_WORDS.values() for w in ws}
    for split in ("train", "valid", "test"):
        rows = _rows(build_colour_root, split)
        assert rows
        for row in rows:
            a = t[row["gt_items"][0]]
            words = set(re.findall(r"[a-z]+", row["context"].lower()))
            assert a["colour"] in words and gadgets.BUILD_WORDS[a["build"]][0] in words, row["context"]
            assert not words & motif_words, row["context"]  # the motif is the distractor now
            for c in row["candidates_st"]:  # no candidate outside the ground truth answers the request
                assert c in row["gt_items"] or (t[c]["build"], t[c]["colour"]) != (a["build"], a["colour"]) \
                    or t[c]["category"] != a["category"]


def test_decisive_needs_gadgets_and_two_known_attributes():
    with pytest.raises(ValueError, match="gadgets scheme only"):
        SynthConfig(decisive=["build", "colour"])
    for bad in (["build"], ["build", "build"], ["build", "finish"], ["motif", "build", "colour"]):
        with pytest.raises(ValueError, match="two different attributes"):
            SynthConfig(scheme="gadgets", decisive=bad)


@pytest.mark.parametrize("scheme", ["gadgets", "gadgets-build-colour", "products"])
def test_the_probe_vocabulary_reads_every_teacher_description_back(scheme, gadgets_root, build_colour_root, synth_root):
    root = {"gadgets": gadgets_root, "gadgets-build-colour": build_colour_root, "products": synth_root}[scheme]
    ds = Dataset(root, "synthetic")
    vocab, truth = ds.attribute_vocabulary(), ds.attribute_truth()
    assert list(vocab) == json.loads(ds.manifest.read_text())["decisive_attributes"]
    for it in Catalog.load(root):
        for attr, words in vocab.items():
            assert first_mentioned(it.primary_image.description, words) == truth[it.item_id][attr], (attr, it.primary_image.description)
