"""`lavic synth`: a visually grounded synthetic catalog in the LaViC layout.

What makes it a fair test of a visually aware recommender:

* Every item has a category (in its title) and visual attributes (only in its
  image and its teacher description). Titles are drawn independently of those
  attributes, so no title says anything about them. Two schemes (``synth.scheme``):
  ``products`` (the default: mugs, t-shirts, vases, ...; decisive colour and pattern,
  a non-decisive emblem shape; 672 px) and ``gadgets`` (:mod:`lavic_ray.data.gadgets`:
  other objects; decisive motif and build, a non-decisive body colour; 336 px; ``synth.decisive``
  picks another pair of the three to decide).
* Each conversation asks for a category with the decisive attributes. Its ground
  truth is every item of its split's pool with that category and those attributes,
  so no distractor is an equally valid answer.
* Items are split into disjoint pools (train / valid / test). A split's ground
  truth and candidates come from its own pool: valid and test ground-truth items
  never occur in a training conversation, so neither an ID nor a title can be
  memorised in place of looking at the image.
* ``candidates_st`` is the real SBERT retriever's top-k over the pool's titles.
  Training lists always hold the ground truth (inserted at a random position when
  retrieval missed it); valid and test lists hold it in a stated fraction.

The attribute truth goes to ``synth_truth.json`` beside the data (for tests and
reports); no model input contains it.
"""

from __future__ import annotations

import json
import logging
import itertools
import random
import string
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from lavic_ray.artifacts import atomic_write_text, write_config, write_json
from lavic_ray.config import SynthConfig
from lavic_ray.data.layout import (
    DESC_FIELD,
    DESC_MAP_FIELD,
    IMAGES_DIR,
    ITEMS_TRAIN_FILE,
    ITEMS_VALID_FILE,
    MANIFEST_FILE,
    TRUTH_FILE,
)
from lavic_ray.data import gadgets
from lavic_ray.data.records import Turn, format_turns, plain_text
from lavic_ray.data.render import (
    COLOURS,
    EMBLEMS,
    PATTERNS,
    SILHOUETTES,
    render_product,
)
from lavic_ray.errors import InvalidInput, OutputExists

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1

BRANDS = (
    "Northwind", "Alder & Finch", "Kestrel", "Brightwater", "Oakhaven", "Lumen Co.", "Marlow", "Pinecrest",
    "Tidewell", "Halcyon", "Everly", "Wrenfield", "Stonebrook", "Juniper Lane", "Corvid", "Fairhollow",
    "Meridian", "Aspenridge", "Hearthly", "Quillon", "Saltmarsh", "Birchway", "Harbor Lane", "Foxglen",
)

# Per category: title nouns, title features, title specs, and how a seeker names it.
CATEGORY_TEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "mug": dict(
        nouns=("Coffee Mug", "Ceramic Mug", "Tea Mug", "Stoneware Mug"),
        features=("Dishwasher and Microwave Safe", "with Comfort Grip Handle", "Lead-Free Glaze", "Stackable Design"),
        specs=("12 oz", "14 oz", "16 oz", "Set of 2"),
        asks=("a mug", "a coffee mug"),
    ),
    "t-shirt": dict(
        nouns=("Crew Neck T-Shirt", "Cotton Tee", "Short Sleeve T-Shirt", "Relaxed Fit Tee"),
        features=("Breathable Cotton Blend", "Pre-Shrunk", "Tagless Comfort", "Classic Fit"),
        specs=("Unisex Size M", "Men's Large", "Women's Small", "Size XL"),
        asks=("a t-shirt", "a tee"),
    ),
    "vase": dict(
        nouns=("Flower Vase", "Ceramic Vase", "Decorative Bud Vase", "Table Vase"),
        features=("for Home Decor", "Hand-Finished", "Waterproof Interior", "Modern Farmhouse Style"),
        specs=("8 inch", "10 inch", "12 inch Tall", "Medium"),
        asks=("a vase", "a flower vase"),
    ),
    "backpack": dict(
        nouns=("Laptop Backpack", "Daypack", "School Backpack", "Travel Backpack"),
        features=("with Padded Laptop Sleeve", "Water-Resistant Fabric", "USB Charging Port", "Lightweight"),
        specs=("25L", "30L", "Fits 15.6 inch Laptop", "One Size"),
        asks=("a backpack", "a daypack"),
    ),
    "table lamp": dict(
        nouns=("Table Lamp", "Bedside Lamp", "Desk Lamp", "Nightstand Lamp"),
        features=("with Fabric Shade", "Dimmable", "E26 Base", "Touch Control"),
        specs=("18 inch", "Bulb Included", "Single Pack", "20 inch Tall"),
        asks=("a table lamp", "a bedside lamp"),
    ),
    "throw pillow": dict(
        nouns=("Throw Pillow Cover", "Decorative Cushion", "Accent Pillow", "Sofa Pillow Cover"),
        features=("Soft Velvet", "Hidden Zipper", "Machine Washable", "Double-Sided"),
        specs=("18x18 inch", "20x20 inch", "16x16 inch", "Set of 2"),
        asks=("a throw pillow", "a cushion"),
    ),
    "umbrella": dict(
        nouns=("Compact Umbrella", "Travel Umbrella", "Windproof Umbrella", "Rain Umbrella"),
        features=("Auto Open Close", "Teflon Coating", "Reinforced Frame", "Ergonomic Handle"),
        specs=("42 inch Canopy", "46 inch", "Folding", "Large"),
        asks=("an umbrella", "a rain umbrella"),
    ),
    "sneaker": dict(
        nouns=("Running Sneaker", "Canvas Sneaker", "Walking Shoe", "Low Top Sneaker"),
        features=("Breathable Mesh", "Cushioned Insole", "Non-Slip Rubber Sole", "Lace-Up"),
        specs=("Men's Size 10", "Women's Size 8", "Unisex", "Size 9"),
        asks=("some sneakers", "a pair of sneakers"),
    ),
}
assert set(CATEGORY_TEXT) == set(SILHOUETTES)

#: Words that name a decisive attribute; none may appear in a title (tested).
ATTRIBUTE_WORDS = frozenset(
    list(COLOURS) + ["white", "stripe", "striped", "stripes", "polka", "dot", "dots", "dotted", "check", "checked",
                     "checkered", "plaid", "solid", "plain", "pattern", "patterned"] + list(EMBLEMS) + ["stars", "hearts"]
)

PATTERN_TEXT = {
    # (how a description says it, how a seeker asks for it, seeker's adjective)
    "solid": ("with a solid, unpatterned finish", "in plain {c} with no pattern", "plain {c} with no pattern"),
    "striped": ("with white horizontal stripes", "in {c} with stripes", "{c} and striped"),
    "polka-dot": ("covered in white polka dots", "in {c} with polka dots", "{c} with polka dots"),
    "checkered": ("with a white checkered pattern", "in {c} with a checkered pattern", "{c} and checkered"),
}

_DESC_TEMPLATES = (
    "The image shows a {c} {n} {p}. A white {e} emblem with a dark outline is printed on the front. "
    "The {n} is photographed against a plain light background with a soft shadow underneath.",
    "This is a studio photo of a {n} in {c}, {p}. On the front there is a white {e}-shaped emblem outlined in black. "
    "The background is a neutral off-white.",
    "A {c} {n} is shown {p}, with a white {e} emblem in the middle of it. "
    "Nothing else is in the frame; the light background keeps the focus on the product.",
)

_REASONS = (
    "It's a gift for my sister.", "Mine finally broke.", "Trying to match the rest of my room.",
    "Budget is around $30.", "My partner keeps borrowing mine.", "I want something that stands out a bit.",
    "Moving into a new place next month.", "",
)
_OPENERS = ("Hi all!", "Help me find this.", "Recommendation request.", "", "Long time lurker here.")
_FOLLOWUPS = (
    "What's your budget?", "Do you care about the brand at all?", "Any size preference?",
    "Is this for everyday use?", "Have you checked the usual stores?",
)


#: a conversation's candidates (the paper's lists hold 10)
NUM_CANDIDATES = 10
#: share of ISBN-10-shaped IDs (the reference's regex never matches them)
ISBN_FRACTION = 0.1
#: share of items that copy another's decisive attributes (conversations with several ground-truth items)
DUPLICATE_FRACTION = 0.06
#: share of items with a second image
SECOND_IMAGE_FRACTION = 0.1
JPEG_QUALITY = 90
#: shares of the conversations in train / valid / test
SPLIT = {"train": 0.75, "valid": 0.10, "test": 0.15}
#: disjoint item pools: a split's ground truth and candidates come from its own pool, so valid/test ground-truth
#: items never occur in a training conversation
POOLS = {"train": 0.60, "valid": 0.15, "test": 0.25}
#: share of valid/test candidate lists that hold the ground truth (train: all)
GT_IN_CANDIDATES = 0.9


@dataclass(frozen=True)
class SynthItem:
    item_id: str
    category: str
    #: (attribute, value) in the scheme's order: the decisive ones first, then the others
    attrs: tuple[tuple[str, str], ...]
    title: str
    pool: str
    n_images: int
    #: how many of ``attrs`` are decisive
    n_decisive: int = 2

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self.attrs)

    @property
    def key(self) -> tuple[str, ...]:
        """What a request asks for: the category and the decisive attributes."""
        return (self.category, *(v for _, v in self.attrs[: self.n_decisive]))


# ---------------------------------------------------------------- pieces


def _isbn10(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(9)]
    check = (11 - sum((10 - i) * d for i, d in enumerate(digits)) % 11) % 11
    return "".join(map(str, digits)) + ("X" if check == 10 else str(check))


def _asin(rng: random.Random) -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "B0" + "".join(rng.choice(alphabet) for _ in range(8))


def make_item_ids(n: int, isbn_fraction: float, rng: random.Random) -> list[str]:
    """``n`` unique 10-character IDs: ASIN-like (``B0`` + 8) and ISBN-10-like (valid check digit)."""
    ids: list[str] = []
    seen: set[str] = set()
    n_isbn = round(n * isbn_fraction)
    while len(ids) < n:
        new = _isbn10(rng) if len(ids) < n_isbn else _asin(rng)
        if new not in seen:
            seen.add(new)
            ids.append(new)
    rng.shuffle(ids)
    return ids


def _describe(category: str, attrs: dict[str, str], item_id: str) -> str:
    """The teacher description: what the image shows (colour, pattern, emblem, category)."""
    rng = random.Random(f"desc:{item_id}")
    return rng.choice(_DESC_TEMPLATES).format(c=attrs["colour"], n=category, p=PATTERN_TEXT[attrs["pattern"]][0],
                                             e=attrs["emblem"])


def _conversation(category: str, attrs: dict[str, str], rng: random.Random) -> list[Turn]:
    ask = rng.choice(CATEGORY_TEXT[category]["asks"])
    c = attrs["colour"]
    _, with_phrase, adjective = PATTERN_TEXT[attrs["pattern"]]
    reason = rng.choice(_REASONS)
    opener = rng.choice(_OPENERS)
    style = rng.randrange(3)
    if style == 0:  # everything in the submission
        sub = f"{opener} I'm looking for {ask} {with_phrase.format(c=c)}. {reason}".strip()
        turns = [Turn("submission", sub), Turn("comment", rng.choice(_FOLLOWUPS)),
                 Turn("comment", f"Not picky about that, it just has to be {adjective.format(c=c)}.")]
    elif style == 1:  # colour first, pattern in a reply
        sub = f"{opener} Any recommendations for {ask}, ideally {c}? {reason}".strip()
        turns = [Turn("submission", sub), Turn("comment", "Any particular style or pattern?"),
                 Turn("comment", f"Yes - {adjective.format(c=c)}, please.")]
    else:  # everything comes out in the comments
        sub = f"{opener} I need {ask}. {reason}".strip()
        turns = [Turn("submission", sub), Turn("comment", "What look are you going for?"),
                 Turn("comment", f"Something {adjective.format(c=c)}.")]
    return turns


def _title(category: str, rng: random.Random) -> str:
    t = CATEGORY_TEXT[category]
    return f"{rng.choice(BRANDS)} {rng.choice(t['nouns'])} {rng.choice(t['features'])}, {rng.choice(t['specs'])}"


def _render(category: str, attrs: dict[str, str], size: int, seed: str):
    return render_product(category, attrs["colour"], attrs["pattern"], attrs["emblem"], size, seed=seed)


def _corpus_lines() -> list[str]:
    lines = list(BRANDS) + list(_REASONS) + list(_FOLLOWUPS) + list(_DESC_TEMPLATES)
    for spec in CATEGORY_TEXT.values():
        for v in spec.values():
            lines.extend(v)
    lines += [" ".join(COLOURS), " ".join(PATTERNS), " ".join(EMBLEMS)]
    lines += [t for triple in PATTERN_TEXT.values() for t in triple]
    return lines


@dataclass(frozen=True)
class Scheme:
    """What a synthetic catalog is made of: its objects, attributes, words and pictures."""

    name: str
    categories: tuple[str, ...]
    #: attributes a request asks for (only in the image and its description), with their values
    decisive: dict[str, tuple[str, ...]]
    #: attributes every item also has (visible, described), drawn at random, never asked for
    other: dict[str, tuple[str, ...]]
    #: per decisive attribute and value: the words a description names it by (the stage-1 probe reads them)
    vocabulary: dict[str, dict[str, tuple[str, ...]]]
    #: words that name an attribute: none may appear in a title
    attribute_words: frozenset
    image_size: int
    title: object
    describe: object
    conversation: object
    render: object
    store: object
    corpus_lines: object


PRODUCTS = Scheme(
    name="products", categories=tuple(SILHOUETTES), decisive={"colour": tuple(COLOURS), "pattern": PATTERNS},
    other={"emblem": EMBLEMS},
    vocabulary={"colour": {c: (c,) for c in COLOURS},
                "pattern": {"solid": ("solid", "unpatterned", "plain"), "striped": ("stripe",), "polka-dot": ("polka", "dots"),
                            "checkered": ("checker", "checked")}},
    attribute_words=ATTRIBUTE_WORDS, image_size=672, title=_title, describe=_describe, conversation=_conversation,
    render=_render, store=lambda title: next(b for b in BRANDS if title.startswith(b)), corpus_lines=_corpus_lines,
)
GADGETS = Scheme(
    name="gadgets", categories=tuple(gadgets.SILHOUETTES), decisive={"motif": gadgets.MOTIFS, "build": gadgets.BUILDS},
    other={"colour": tuple(gadgets.BODY_COLOURS)},
    vocabulary={"motif": gadgets.MOTIF_WORDS, "build": gadgets.BUILD_WORDS},
    attribute_words=gadgets.ATTRIBUTE_WORDS, image_size=336, title=gadgets.title, describe=gadgets.describe,
    conversation=gadgets.conversation, render=gadgets.render, store=gadgets.store, corpus_lines=gadgets.corpus_lines,
)
#: every scheme by name (``synth.scheme``)
SCHEMES = {s.name: s for s in (PRODUCTS, GADGETS)}


def scheme_of(cfg: SynthConfig) -> Scheme:
    """The scheme ``cfg`` names; with ``synth.decisive`` (gadgets), the one that asks for that pair."""
    scheme = SCHEMES[cfg.scheme]
    if cfg.decisive is None or tuple(cfg.decisive) == tuple(scheme.decisive):
        return scheme
    pair = tuple(cfg.decisive)
    return replace(scheme, decisive={a: gadgets.VALUES[a] for a in pair},
                   other={a: v for a, v in gadgets.VALUES.items() if a not in pair},
                   vocabulary={a: gadgets.VOCABULARY[a] for a in pair},
                   conversation=partial(gadgets.conversation_asking, pair))


def describe(item: SynthItem, scheme: Scheme = PRODUCTS) -> str:
    """The teacher description of an item: what its image shows."""
    return scheme.describe(item.category, item.attributes, item.item_id)


def image_size(cfg: SynthConfig) -> int:
    """The image side: ``synth.image_size``, or the scheme's own (products 672, gadgets 336)."""
    return cfg.image_size or scheme_of(cfg).image_size


def _split_counts(total: int, fr: dict[str, float]) -> dict[str, int]:
    n_train = round(total * fr["train"])
    n_valid = round(total * fr["valid"])
    return {"train": n_train, "valid": n_valid, "test": total - n_train - n_valid}


# ---------------------------------------------------------------- generator


def _next_combo(used: list[tuple[str, ...]], duplicate_fraction: float, rng: random.Random,
                scheme: Scheme = PRODUCTS) -> tuple[str, ...]:
    """The decisive attribute values (products: colour, pattern) for the next item of one category and pool.

    Combinations are drawn without replacement, so two items of a pool share one
    only by design: a ``duplicate_fraction`` of items copy an earlier item's
    combination, which makes that request's ground truth two items (as in the
    real data, where ~10% of conversations name several).
    """
    all_combos = list(itertools.product(*scheme.decisive.values()))
    if used and rng.random() < duplicate_fraction:
        combo = rng.choice(used)
    else:
        free = [c for c in all_combos if c not in used]
        if not free:  # every combination taken: the least used ones, so no request gets many answers
            counts = {c: used.count(c) for c in all_combos}
            free = [c for c in all_combos if counts[c] == min(counts.values())]
        combo = rng.choice(free)
    used.append(combo)
    return combo


def make_items(cfg: SynthConfig) -> list[SynthItem]:
    """The catalog: attributes drawn independently of titles, pools stratified by category."""
    scheme = scheme_of(cfg)
    rng = random.Random(f"{cfg.seed}:items")
    ids = make_item_ids(cfg.items, ISBN_FRACTION, rng)
    cats = list(scheme.categories)
    by_cat: dict[str, list[str]] = defaultdict(list)
    for n, item_id in enumerate(ids):
        by_cat[cats[n % len(cats)]].append(item_id)
    items: list[SynthItem] = []
    for cat in cats:
        members = by_cat[cat]
        counts = _split_counts(len(members), POOLS)
        pools = ["train"] * counts["train"] + ["valid"] * counts["valid"] + ["test"] * counts["test"]
        titles: set[str] = set()
        combos: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for item_id, pool in zip(members, pools):
            title = scheme.title(cat, rng)
            while title in titles:
                title = scheme.title(cat, rng)
            titles.add(title)
            decisive = _next_combo(combos[pool], DUPLICATE_FRACTION, rng, scheme)
            attrs = tuple(zip(scheme.decisive, decisive)) + tuple((a, rng.choice(v)) for a, v in scheme.other.items())
            items.append(SynthItem(
                item_id=item_id, category=cat, attrs=attrs, title=title, pool=pool,
                n_images=2 if rng.random() < SECOND_IMAGE_FRACTION else 1, n_decisive=len(scheme.decisive),
            ))
    counts = _split_counts(cfg.conversations, SPLIT)
    for pool in ("train", "valid", "test"):
        size = sum(it.pool == pool for it in items)
        if counts[pool] and size <= NUM_CANDIDATES:
            raise InvalidInput(
                f"synth: the {pool} pool would hold {size} items, but a candidate list needs more than "
                f"{NUM_CANDIDATES}; raise synth.items (now {cfg.items}) "
            )
    return items


def make_conversations(items: list[SynthItem], cfg: SynthConfig, retriever) -> dict[str, list[dict]]:
    """Conversation records per split, with SBERT ``candidates_st`` lists.

    Args:
        items: From :func:`make_items`.
        cfg: The synthetic catalog config.
        retriever: An empty SBERT retriever (``lavic_ray.retrieval.SBERTRetriever``; anything with
            ``index(ids, texts)`` and ``search(queries, k, restrict_to)``): it ranks each pool's
            titles for the conversation's text.
    """
    scheme = scheme_of(cfg)
    rng = random.Random(f"{cfg.seed}:conversations")
    by_id = {it.item_id: it for it in items}
    retriever.index([it.item_id for it in items], [it.title for it in items])
    counts = _split_counts(cfg.conversations, SPLIT)
    out: dict[str, list[dict]] = {}
    n = NUM_CANDIDATES
    for split in ("train", "valid", "test"):
        pool = [it for it in items if it.pool == split]
        matches: dict[tuple, list[str]] = defaultdict(list)
        for it in pool:
            matches[it.key].append(it.item_id)
        # each pool item is a target about equally often
        targets: list[SynthItem] = []
        while len(targets) < counts[split]:
            cycle = list(pool)
            rng.shuffle(cycle)
            targets.extend(cycle)
        targets = targets[: counts[split]]
        with_gt = set(range(counts[split])) if split == "train" else set(
            rng.sample(range(counts[split]), round(GT_IN_CANDIDATES * counts[split]))
        )
        convs = [format_turns(scheme.conversation(t.category, t.attributes, rng)) for t in targets]
        ranked_all = retriever.search([plain_text(c) for c in convs], k=len(pool), restrict_to=[it.item_id for it in pool])
        rows = []
        for i, (target, context, ranked) in enumerate(zip(targets, convs, ranked_all)):
            gt_items = sorted(matches[target.key])
            gt_set = set(gt_items)
            if len(gt_set) >= n:
                raise InvalidInput(f"{len(gt_set)} items match one request; raise synth.items")
            order = [item_id for item_id, _ in ranked]
            if i in with_gt:
                cands = order[:n]
                for g in gt_items:
                    if g not in cands:
                        drop = max(j for j, c in enumerate(cands) if c not in gt_set)
                        cands.pop(drop)
                        cands.insert(rng.randrange(len(cands) + 1), g)
            else:
                cands = [c for c in order if c not in gt_set][:n]
            rows.append({
                "context": context,
                "context_items": [],
                "gt": f"I got [this one](https://www.amazon.com/dp/{target.item_id}) and love it.",
                "gt_items": gt_items,
                "candidates_st": cands,
            })
            assert all(by_id[c].key != target.key for c in cands if c not in gt_set)
        out[split] = rows
    return out


def generate(cfg: SynthConfig, out: str | Path, retriever, force: bool = False) -> dict:
    """Write a complete synthetic dataset to ``out``.

    Args:
        cfg: Sizes, seed and fractions.
        out: Target directory; it must be empty or absent unless ``force``.
        retriever: The SBERT retriever that makes ``candidates_st`` (see :func:`make_conversations`).
        force: Replace a previous synthetic dataset in ``out``.

    Returns:
        The manifest (also written to ``out/synth_manifest.json``).

    Raises:
        OutputExists: ``out`` holds files and ``force`` is not set, holds something that is not
            a synthetic dataset (never overwritten), or is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} is a file, not a directory: choose another --out")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise OutputExists(f"{out} is not empty; choose another --out or pass --force to replace a synthetic dataset")
        if not (out / MANIFEST_FILE).is_file():
            raise OutputExists(f"{out} is not empty and holds no {MANIFEST_FILE}: refusing to overwrite data that lavic synth did not write")
    t0 = time.monotonic()
    scheme = scheme_of(cfg)
    items = make_items(cfg)
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for n, it in enumerate(items, start=1):
        for k in range(it.n_images):
            img = scheme.render(it.category, it.attributes, image_size(cfg), seed=f"{cfg.seed}:{it.item_id}:{k}")
            tmp = images / f".{it.item_id}_{k}.jpg.tmp"
            img.save(tmp, format="JPEG", quality=JPEG_QUALITY)
            tmp.replace(images / f"{it.item_id}_{k}.jpg")
        if n % 100 == 0 or n == len(items):
            log.info("rendered %d/%d items", n, len(items))

    desc = {it.item_id: describe(it, scheme) for it in items}
    train_meta = {}
    valid_lines = []
    for it in items:
        names = [f"{it.item_id}_{k}.jpg" for k in range(it.n_images)]
        if it.pool == "train":
            train_meta[it.item_id] = {
                "title": it.title,
                "main_category": it.category,
                "store": scheme.store(it.title),
                "features": [],
                DESC_MAP_FIELD: {name: desc[it.item_id] for name in names},
            }
        else:
            for name in names:
                valid_lines.append({"title": it.title, "image_name": name, "image": f"{IMAGES_DIR}/{name}", DESC_FIELD: desc[it.item_id]})
    atomic_write_text(out / ITEMS_TRAIN_FILE, json.dumps(train_meta, indent=1) + "\n")
    atomic_write_text(out / ITEMS_VALID_FILE, "".join(json.dumps(v) + "\n" for v in valid_lines))

    convs = make_conversations(items, cfg, retriever)
    for split, rows in convs.items():
        atomic_write_text(out / cfg.domain / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    truth = {
        "items": {it.item_id: {"category": it.category, **it.attributes, "pool": it.pool} for it in items},
    }
    write_json(out / TRUTH_FILE, truth)
    manifest = {
        "generator": "lavic-ray synthetic catalog",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "domain": cfg.domain,
        "items": len(items),
        "images": sum(it.n_images for it in items),
        "isbn_like_ids": sum(it.item_id[0].isdigit() for it in items),
        "pools": {p: sum(it.pool == p for it in items) for p in ("train", "valid", "test")},
        "conversations": {s: len(r) for s, r in convs.items()},
        "gt_in_candidates": {
            s: (sum(any(g in r["candidates_st"] for g in r["gt_items"]) for r in rows) / len(rows) if rows else None)
            for s, rows in convs.items()
        },
        "attributes": {**{a: list(v) for a, v in {**scheme.decisive, **scheme.other}.items()},
                       "category": list(scheme.categories)},
        "decisive_attributes": list(scheme.decisive),
    }
    if scheme is not PRODUCTS:  # (the default's manifest stays as it was)
        manifest["scheme"] = scheme.name
        manifest["image_size"] = image_size(cfg)
    manifest["vocabulary"] = {a: {v: list(w) for v, w in vals.items()} for a, vals in scheme.vocabulary.items()}
    write_json(out / MANIFEST_FILE, manifest)
    write_config(out, cfg)
    log.info("synthetic catalog written to %s in %.1f s", out, time.monotonic() - t0)
    return manifest


def corpus_lines(scheme: str = "products") -> list[str]:
    """Every text fragment the generator writes (titles, conversations, descriptions, attribute words):
    the corpus the tiny model's tokenizer is trained on, so that any synthetic text encodes compactly."""
    return SCHEMES[scheme].corpus_lines()
