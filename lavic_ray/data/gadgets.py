"""The ``gadgets`` synthetic catalog scheme: other objects, other decisive attributes, smaller images.

A second setting of ``lavic synth`` (``synth.scheme=gadgets``) that shares nothing visual with
the default ``products`` scheme, so a result on both is not a result on one rendering trick:

* objects: water bottles, alarm clocks, speakers, notebooks, lunch boxes and kettles;
* decisive attributes (only in the image and its description, never in a title): the **motif**
  printed on the front (star, heart, moon, bolt, diamond, cross) and the object's **build**
  (slim, standard, wide: its proportions);
* a body colour drawn at random from a palette whose names the default scheme never uses - it is
  visible and described, but no conversation asks for it (a distractor, not a cue);
* ``synth.decisive`` picks another pair of motif, build and colour to decide (e.g. build and colour,
  which the quickstart's small vision tower resolves; it does not resolve the motif - bench/RESULTS.md);
  the third stays a visible, described distractor;
* 336x336 images by default (LLaVA-Next tiles them into fewer views than the default's 672).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFilter

from lavic_ray.data.records import Turn
from lavic_ray.data.render import INK, WHITE, heart_points, star_points

BODY_COLOURS: dict[str, tuple[int, int, int]] = {
    "navy": (35, 50, 110),
    "coral": (240, 110, 90),
    "mint": (120, 210, 170),
    "mustard": (210, 170, 40),
    "lilac": (185, 150, 215),
    "graphite": (75, 78, 85),
}
MOTIFS = ("star", "heart", "moon", "bolt", "diamond", "cross")
BUILDS = ("slim", "standard", "wide")
#: the body's width relative to its height, per build
BUILD_ASPECT = {"slim": 0.52, "standard": 0.78, "wide": 1.12}


BRANDS = (
    "Voltaic", "Brindle & Co.", "Otterly", "Cobalt Row", "Fernhill", "Tanager", "Quarry Street", "Ravelin",
    "Lodestar", "Mossbank", "Pellucid", "Gantry", "Hollin", "Sparrowhawk", "Westmere", "Ashgrove",
)

CATEGORY_TEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "water bottle": dict(
        nouns=("Water Bottle", "Insulated Bottle", "Sports Bottle", "Hydration Flask"),
        features=("Leak-Proof Lid", "BPA-Free", "Keeps Drinks Cold 24 Hours", "Powder-Coated Steel"),
        specs=("500 ml", "750 ml", "1 Litre", "24 oz"),
        asks=("a water bottle", "a drinks bottle"),
    ),
    "alarm clock": dict(
        nouns=("Alarm Clock", "Twin Bell Clock", "Bedside Clock", "Analog Alarm Clock"),
        features=("Silent Non-Ticking", "Loud Bell Alarm", "Battery Operated", "Backlit Dial"),
        specs=("4 inch Dial", "AA Battery", "Single Pack", "Quartz Movement"),
        asks=("an alarm clock", "a bedside clock"),
    ),
    "speaker": dict(
        nouns=("Bluetooth Speaker", "Portable Speaker", "Wireless Speaker", "Mini Speaker"),
        features=("12-Hour Playtime", "Waterproof IPX7", "Built-in Microphone", "Deep Bass"),
        specs=("10 W", "20 W", "Bluetooth 5.3", "USB-C Charging"),
        asks=("a speaker", "a bluetooth speaker"),
    ),
    "notebook": dict(
        nouns=("Hardcover Notebook", "Dotted Journal", "Lined Notebook", "Planner"),
        features=("Elastic Closure", "Numbered Pages", "Lay-Flat Binding", "Inner Pocket"),
        specs=("A5", "192 Pages", "B6", "120 gsm Paper"),
        asks=("a notebook", "a journal"),
    ),
    "lunch box": dict(
        nouns=("Lunch Box", "Bento Box", "Meal Prep Container", "Snack Box"),
        features=("Microwave Safe", "Leak-Resistant Seal", "Dishwasher Safe", "With Cutlery"),
        specs=("1.2 L", "3 Compartments", "900 ml", "Single Tier"),
        asks=("a lunch box", "a bento box"),
    ),
    "kettle": dict(
        nouns=("Electric Kettle", "Stovetop Kettle", "Tea Kettle", "Gooseneck Kettle"),
        features=("Auto Shut-Off", "Boil-Dry Protection", "Cool-Touch Handle", "Fast Boil"),
        specs=("1.7 L", "1 L", "1500 W", "Cordless"),
        asks=("a kettle", "a tea kettle"),
    ),
}

#: how a description and a seeker name each value (the probe reads these words back)
MOTIF_WORDS = {m: (m,) for m in MOTIFS} | {"bolt": ("bolt", "lightning"), "moon": ("moon", "crescent")}
BUILD_TEXT = {
    # (how a description says it, how a seeker asks for it)
    "slim": ("slim, narrow", "the slim, narrow kind"),
    "standard": ("standard-width", "a standard width, not slim and not wide"),
    "wide": ("wide, squat", "the wide, squat kind"),
}
BUILD_WORDS = {"slim": ("slim", "narrow"), "standard": ("standard",), "wide": ("wide", "squat")}
COLOUR_WORDS = {c: (c,) for c in BODY_COLOURS}
#: every attribute's values, and the words a description names each value by (``synth.decisive`` picks two)
VALUES = {"motif": MOTIFS, "build": BUILDS, "colour": tuple(BODY_COLOURS)}
VOCABULARY = {"motif": MOTIF_WORDS, "build": BUILD_WORDS, "colour": COLOUR_WORDS}

ATTRIBUTE_WORDS = frozenset(list(BODY_COLOURS) + list(MOTIFS) + list(BUILDS) + [
    "lightning", "crescent", "narrow", "squat", "motif", "slimline", "broad", "plus"])

_DESC_TEMPLATES = (
    "The image shows a {b} {n} in {c}. A large white {m} with a dark outline is printed on its front. "
    "It stands on a plain light background with a soft shadow underneath.",
    "A studio photo of a {c} {n}; its build is {b}. The front carries a big white {m} outlined in black. "
    "The background is an even off-white.",
    "This {n} is {b} and {c}, with a white {m} on the front. "
    "Nothing else is in the frame.",
)
_REASONS = (
    "It's for my office desk.", "Birthday present for a friend.", "The old one stopped working.",
    "Nothing too expensive.", "Want it to match my other stuff.", "",
)
_OPENERS = ("Hey everyone.", "Quick question.", "Looking for suggestions.", "", "First post here.")
_FOLLOWUPS = (
    "Any brand preference?", "What's your price range?", "Is it for home or work?",
    "Do you need it soon?", "Have you looked online already?",
)


def title(category: str, rng: random.Random) -> str:
    t = CATEGORY_TEXT[category]
    return f"{rng.choice(BRANDS)} {rng.choice(t['nouns'])} {rng.choice(t['features'])}, {rng.choice(t['specs'])}"


def describe(category: str, attrs: dict[str, str], item_id: str) -> str:
    rng = random.Random(f"desc:{item_id}")
    return rng.choice(_DESC_TEMPLATES).format(b=BUILD_TEXT[attrs["build"]][0], n=category, c=attrs["colour"],
                                             m=attrs["motif"])


def conversation(category: str, attrs: dict[str, str], rng: random.Random) -> list[Turn]:
    ask = rng.choice(CATEGORY_TEXT[category]["asks"])
    motif, build = attrs["motif"], BUILD_TEXT[attrs["build"]][1]
    reason, opener = rng.choice(_REASONS), rng.choice(_OPENERS)
    style = rng.randrange(3)
    if style == 0:
        sub = f"{opener} I want {ask} with a {motif} on the front, {build}. {reason}".strip()
        return [Turn("submission", sub), Turn("comment", rng.choice(_FOLLOWUPS)),
                Turn("comment", f"No preference there, just a {motif} motif and {build}.")]
    if style == 1:
        sub = f"{opener} Can anyone recommend {ask} with a {motif} printed on it? {reason}".strip()
        return [Turn("submission", sub), Turn("comment", "What shape should it be?"),
                Turn("comment", f"I'd like {build}.")]
    sub = f"{opener} I'm after {ask}. {reason}".strip()
    return [Turn("submission", sub), Turn("comment", "Any particular look?"),
            Turn("comment", f"{build[0].upper() + build[1:]}, with a {motif} on it.")]


# how a seeker names a value: after the object ("... a kettle with a star on the front"), as an answer
# ("I'd like a star motif"), and the question that asks for it
_WITH = {"motif": "with a {} on the front", "build": "that's {}", "colour": "in {}"}
_REPLY = {"motif": "a {} motif", "build": "{}", "colour": "in {}"}
_QUESTION = {"motif": "Anything printed on it?", "build": "What shape should it be?", "colour": "Any colour in mind?"}


def _seeker_value(attr: str, value: str) -> str:
    return BUILD_TEXT[value][1] if attr == "build" else value


def conversation_asking(decisive: tuple[str, str], category: str, attrs: dict[str, str], rng: random.Random) -> list[Turn]:
    """A request for the two ``decisive`` attributes (``synth.decisive``), in random order; the third is never named.

    (The default pair, motif and build, keeps :func:`conversation`, so its catalogs stay as they were.)
    """
    ask = rng.choice(CATEGORY_TEXT[category]["asks"])
    a, b = rng.sample(list(decisive), 2)
    va, vb = _seeker_value(a, attrs[a]), _seeker_value(b, attrs[b])
    reason, opener = rng.choice(_REASONS), rng.choice(_OPENERS)
    style = rng.randrange(3)
    if style == 0:
        sub = f"{opener} I want {ask} {_WITH[a].format(va)}, {_WITH[b].format(vb)}. {reason}".strip()
        return [Turn("submission", sub), Turn("comment", rng.choice(_FOLLOWUPS)),
                Turn("comment", f"No preference there, just {_REPLY[a].format(va)}, and {_REPLY[b].format(vb)}.")]
    if style == 1:
        sub = f"{opener} Can anyone recommend {ask} {_WITH[a].format(va)}? {reason}".strip()
        return [Turn("submission", sub), Turn("comment", _QUESTION[b]), Turn("comment", f"I'd like {_REPLY[b].format(vb)}.")]
    reply = f"{_REPLY[a].format(va)}, and {_REPLY[b].format(vb)}."
    sub = f"{opener} I'm after {ask}. {reason}".strip()
    return [Turn("submission", sub), Turn("comment", "Any particular look?"), Turn("comment", reply[0].upper() + reply[1:])]


def store(title_text: str) -> str:
    return next(b for b in BRANDS if title_text.startswith(b))


def corpus_lines() -> list[str]:
    lines = list(BRANDS) + list(_REASONS) + list(_FOLLOWUPS) + list(_OPENERS) + list(_DESC_TEMPLATES)
    for spec in CATEGORY_TEXT.values():
        for v in spec.values():
            lines.extend(v)
    lines += [" ".join(BODY_COLOURS), " ".join(MOTIFS), " ".join(BUILDS)]
    lines += [t for pair in BUILD_TEXT.values() for t in pair]
    return lines


# ---------------------------------------------------------------- rendering
# Each drawer paints the body's mask (255 inside) into ``box`` and returns where the motif goes
# (centre, radius) and ink details drawn on top (not part of the body's colour).


def _bottle(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rounded_rectangle((x0, y0 + 0.16 * h, x1, y1), radius=int(0.22 * w), fill=255)
    d.rectangle((x0 + 0.3 * w, y0 + 0.02 * h, x1 - 0.3 * w, y0 + 0.18 * h), fill=255)
    extra.append(("rect", (x0 + 0.26 * w, y0, x1 - 0.26 * w, y0 + 0.09 * h)))
    return (x0 + 0.5 * w, y0 + 0.58 * h), 0.3 * min(w, 0.8 * h)


def _clock(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.ellipse((x0, y0 + 0.18 * h, x1, y1 - 0.06 * h), fill=255)
    extra.append(("disc", (x0 + 0.12 * w, y0 + 0.04 * h, x0 + 0.36 * w, y0 + 0.22 * h)))
    extra.append(("disc", (x1 - 0.36 * w, y0 + 0.04 * h, x1 - 0.12 * w, y0 + 0.22 * h)))
    extra.append(("line", (x0 + 0.22 * w, y1 - 0.1 * h, x0 + 0.12 * w, y1)))
    extra.append(("line", (x1 - 0.22 * w, y1 - 0.1 * h, x1 - 0.12 * w, y1)))
    return (x0 + 0.5 * w, y0 + 0.55 * h), 0.3 * min(w, 0.76 * h)


def _speaker(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rounded_rectangle((x0, y0, x1, y1), radius=int(0.16 * min(w, h)), fill=255)
    extra.append(("rect", (x0 + 0.12 * w, y1 - 0.14 * h, x1 - 0.12 * w, y1 - 0.06 * h)))
    return (x0 + 0.5 * w, y0 + 0.44 * h), 0.32 * min(w, 0.8 * h)


def _notebook(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rectangle((x0, y0, x1, y1), fill=255)
    extra.append(("line", (x0 + 0.1 * w, y0, x0 + 0.1 * w, y1)))
    extra.append(("line", (x1 - 0.12 * w, y0, x1 - 0.12 * w, y1)))
    return (x0 + 0.5 * w, y0 + 0.45 * h), 0.28 * min(w, h)


def _lunchbox(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rounded_rectangle((x0, y0 + 0.25 * h, x1, y1), radius=int(0.1 * min(w, h)), fill=255)
    extra.append(("arc", (x0 + 0.3 * w, y0 + 0.02 * h, x1 - 0.3 * w, y0 + 0.5 * h)))
    extra.append(("line", (x0, y0 + 0.42 * h, x1, y0 + 0.42 * h)))
    return (x0 + 0.5 * w, y0 + 0.68 * h), 0.26 * min(w, 0.75 * h)


def _kettle(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.ellipse((x0 + 0.12 * w, y0 + 0.2 * h, x1 - 0.12 * w, y1), fill=255)
    d.polygon([(x0 + 0.2 * w, y0 + 0.6 * h), (x0, y0 + 0.3 * h), (x0 + 0.06 * w, y0 + 0.28 * h),
               (x0 + 0.28 * w, y0 + 0.48 * h)], fill=255)
    extra.append(("arc", (x0 + 0.3 * w, y0, x1 - 0.3 * w, y0 + 0.42 * h)))
    return (x0 + 0.5 * w, y0 + 0.62 * h), 0.26 * min(0.76 * w, 0.8 * h)


SILHOUETTES = {"water bottle": _bottle, "alarm clock": _clock, "speaker": _speaker, "notebook": _notebook,
               "lunch box": _lunchbox, "kettle": _kettle}
assert set(SILHOUETTES) == set(CATEGORY_TEXT)


def _motif(d: ImageDraw.ImageDraw, shape: str, c: tuple[float, float], r: float, bg) -> None:
    cx, cy = c
    outline = max(2, int(r * 0.1))
    if shape == "moon":  # a disc with a body-coloured disc cut out of it
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=WHITE, outline=INK, width=outline)
        d.ellipse((cx - 0.45 * r, cy - 1.05 * r, cx + 1.35 * r, cy + 0.75 * r), fill=bg, outline=INK, width=outline)
        return
    if shape == "star":
        pts = star_points(c, r, 0.42)
    elif shape == "heart":
        pts = heart_points(c, r)
    elif shape == "bolt":
        u = [(0.15, -1.0), (-0.55, 0.12), (-0.05, 0.12), (-0.2, 1.0), (0.55, -0.18), (0.05, -0.18), (0.35, -1.0)]
        pts = [(cx + r * x, cy + r * y) for x, y in u]
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    elif shape == "cross":
        a, b = 0.32 * r, r
        pts = [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy - a), (cx + b, cy - a), (cx + b, cy + a), (cx + a, cy + a),
               (cx + a, cy + b), (cx - a, cy + b), (cx - a, cy + a), (cx - b, cy + a), (cx - b, cy - a), (cx - a, cy - a)]
    else:
        raise ValueError(f"unknown motif {shape!r}")
    d.polygon(pts, fill=WHITE, outline=INK, width=outline)


def render(category: str, attrs: dict[str, str], size: int = 336, seed: int | str = 0) -> Image.Image:
    """One product photo: the body in its colour and build, the motif on its front."""
    rng = random.Random(seed)
    tint = rng.randint(230, 246)
    bg = Image.new("RGB", (size, size), (tint - rng.randint(0, 8), tint, tint - rng.randint(0, 6)))
    h = size * rng.uniform(0.66, 0.74)
    w = min(h * BUILD_ASPECT[attrs["build"]], size * 0.9)
    cx = size / 2 + rng.uniform(-0.03, 0.03) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    shadow = Image.new("L", (size, size), 0)
    ImageDraw.Draw(shadow).ellipse((box[0], box[3] - 0.04 * h, box[2], box[3] + 0.05 * h), fill=80)
    bg.paste((120, 120, 125), mask=shadow.filter(ImageFilter.GaussianBlur(size / 60)))

    mask = Image.new("L", (size, size), 0)
    extra: list = []
    centre, radius = SILHOUETTES[category](ImageDraw.Draw(mask), box, extra)
    colour = BODY_COLOURS[attrs["colour"]]
    bg.paste(colour, mask=mask)
    bg.paste(INK, mask=mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3)))
    d = ImageDraw.Draw(bg)
    lw = max(2, int(size / 110))
    for kind, geo in extra:
        if kind == "line":
            d.line(geo, fill=INK, width=lw * 2)
        elif kind == "rect":
            d.rectangle(geo, fill=INK)
        elif kind == "disc":
            d.ellipse(geo, fill=INK)
        elif kind == "arc":
            d.arc(geo, 180, 360, fill=INK, width=lw * 2)
    _motif(d, attrs["motif"], centre, radius, colour)
    return bg
