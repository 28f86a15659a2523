"""Pillow rendering of synthetic product photos.

Each product is a category silhouette filled with a colour and a pattern, with a
white emblem (a shape detail) on it, on a light studio background. Everything
that decides a recommendation - colour, pattern, emblem - is visible here and
nowhere in the title.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 45),
    "orange": (240, 135, 25),
    "yellow": (238, 205, 35),
    "green": (45, 150, 65),
    "teal": (20, 140, 145),
    "blue": (40, 80, 205),
    "purple": (120, 50, 170),
    "pink": (238, 115, 175),
}
PATTERNS = ("solid", "striped", "polka-dot", "checkered")
EMBLEMS = ("circle", "star", "triangle", "heart")

WHITE = (250, 250, 250)
INK = (30, 30, 35)


# ---------------------------------------------------------------- silhouettes
# Each drawer paints the product's mask (255 inside) in a unit box scaled to
# ``box = (x0, y0, x1, y1)`` and returns the emblem centre and radius, plus a
# list of ink strokes drawn on top (handles, soles) that are not patterned.


def _mug(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body = (x0, y0 + 0.1 * h, x0 + 0.72 * w, y1)
    d.rounded_rectangle(body, radius=int(0.06 * w), fill=255)
    hw = int(0.07 * w)
    d.ellipse((x0 + 0.55 * w, y0 + 0.3 * h, x1, y0 + 0.75 * h), outline=255, width=hw)
    cx, cy = (body[0] + body[2]) / 2, (body[1] + body[3]) / 2
    return (cx, cy), 0.17 * w


def _tshirt(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    p = lambda fx, fy: (x0 + fx * w, y0 + fy * h)  # noqa: E731
    d.polygon([p(0.32, 0.05), p(0.42, 0.1), p(0.58, 0.1), p(0.68, 0.05), p(1.0, 0.25), p(0.88, 0.45),
               p(0.78, 0.38), p(0.78, 1.0), p(0.22, 1.0), p(0.22, 0.38), p(0.12, 0.45), p(0.0, 0.25)], fill=255)
    return (x0 + 0.5 * w, y0 + 0.52 * h), 0.15 * w


def _vase(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts_r, pts_l = [], []
    for i in range(41):
        t = i / 40
        half = 0.16 + 0.30 * math.sin(math.pi * (0.15 + 0.85 * t)) ** 1.5
        if t < 0.12:
            half = 0.2
        y = y0 + t * h
        pts_r.append((x0 + (0.5 + half) * w, y))
        pts_l.append((x0 + (0.5 - half) * w, y))
    d.polygon(pts_r + pts_l[::-1], fill=255)
    return (x0 + 0.5 * w, y0 + 0.6 * h), 0.16 * w


def _backpack(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rounded_rectangle((x0 + 0.1 * w, y0 + 0.15 * h, x1 - 0.1 * w, y1), radius=int(0.18 * w), fill=255)
    d.arc((x0 + 0.35 * w, y0, x1 - 0.35 * w, y0 + 0.3 * h), 180, 360, fill=255, width=int(0.05 * w))
    extra.append(("rect", (x0 + 0.25 * w, y0 + 0.68 * h, x1 - 0.25 * w, y1 - 0.06 * h)))
    return (x0 + 0.5 * w, y0 + 0.45 * h), 0.15 * w


def _lamp(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0 + 0.28 * w, y0), (x1 - 0.28 * w, y0), (x1, y0 + 0.5 * h), (x0, y0 + 0.5 * h)], fill=255)
    d.ellipse((x0 + 0.2 * w, y1 - 0.1 * h, x1 - 0.2 * w, y1), fill=255)
    extra.append(("line", (x0 + 0.5 * w, y0 + 0.5 * h, x0 + 0.5 * w, y1 - 0.06 * h)))
    return (x0 + 0.5 * w, y0 + 0.28 * h), 0.14 * w


def _pillow(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts = []
    for i in range(80):
        a = 2 * math.pi * i / 80
        c, s = math.cos(a), math.sin(a)
        # a squircle with pinched corners
        r = 1.0 / (abs(c) ** 4 + abs(s) ** 4) ** 0.25
        r *= 1 - 0.08 * math.cos(4 * a) ** 2
        pts.append((x0 + 0.5 * w + 0.48 * w * r * c / 1.19, y0 + 0.5 * h + 0.42 * h * r * s / 1.19))
    d.polygon(pts, fill=255)
    return (x0 + 0.5 * w, y0 + 0.5 * h), 0.17 * w


def _umbrella(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.pieslice((x0, y0 + 0.05 * h, x1, y0 + 1.05 * h), 180, 360, fill=255)
    extra.append(("line", (x0 + 0.5 * w, y0 + 0.55 * h, x0 + 0.5 * w, y1 - 0.05 * h)))
    extra.append(("hook", (x0 + 0.5 * w, y1 - 0.05 * h, 0.06 * w)))
    return (x0 + 0.5 * w, y0 + 0.36 * h), 0.14 * w


def _sneaker(d, box, extra):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    p = lambda fx, fy: (x0 + fx * w, y0 + fy * h)  # noqa: E731
    d.polygon([p(0.05, 0.35), p(0.35, 0.3), p(0.55, 0.5), p(0.85, 0.6), p(1.0, 0.75), p(1.0, 0.88),
               p(0.0, 0.88), p(0.0, 0.4)], fill=255)
    extra.append(("sole", (x0, y0 + 0.88 * h, x1, y0 + 0.98 * h)))
    return (x0 + 0.3 * w, y0 + 0.62 * h), 0.11 * w


SILHOUETTES = {
    "mug": _mug,
    "t-shirt": _tshirt,
    "vase": _vase,
    "backpack": _backpack,
    "table lamp": _lamp,
    "throw pillow": _pillow,
    "umbrella": _umbrella,
    "sneaker": _sneaker,
}


# ---------------------------------------------------------------- patterns


def _texture(size: int, colour: tuple[int, int, int], pattern: str, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), colour)
    d = ImageDraw.Draw(img)
    if pattern == "solid":
        return img
    period = int(size * rng.uniform(0.11, 0.14))
    phase = rng.randrange(period)
    if pattern == "striped":
        for y in range(-period + phase, size, period):
            d.rectangle((0, y, size, y + period // 2 - 1), fill=WHITE)
    elif pattern == "polka-dot":
        r = period * 0.22
        for row, y in enumerate(range(-period + phase, size + period, period)):
            off = period / 2 if row % 2 else 0
            for x in range(-period, size + period, period):
                cx, cy = x + off + phase, y
                d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=WHITE)
    elif pattern == "checkered":
        for i, y in enumerate(range(-period + phase, size, period)):
            for j, x in enumerate(range(-period + phase, size, period)):
                if (i + j) % 2:
                    d.rectangle((x, y, x + period - 1, y + period - 1), fill=WHITE)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return img


def star_points(c: tuple[float, float], r: float, inner: float) -> list[tuple[float, float]]:
    """A five-pointed star's outline around ``c``: points at radius ``r``, notches at ``r * inner``."""
    cx, cy = c
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def heart_points(c: tuple[float, float], r: float) -> list[tuple[float, float]]:
    """A heart's outline around ``c``, ``r`` wide each side (60 points of the classic parametric curve)."""
    cx, cy = c
    pts = []
    for i in range(60):
        t = 2 * math.pi * i / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 16, cy - r * y / 16))
    return pts


def _emblem(d: ImageDraw.ImageDraw, shape: str, c: tuple[float, float], r: float) -> None:
    cx, cy = c
    outline = max(3, int(r * 0.14))
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=WHITE, outline=INK, width=outline)
        return
    if shape == "star":
        pts = star_points(c, r, 0.45)
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    elif shape == "heart":
        pts = heart_points(c, r)
    else:
        raise ValueError(f"unknown emblem {shape!r}")
    d.polygon(pts, fill=WHITE, outline=INK, width=outline)


def render_product(
    category: str,
    colour: str,
    pattern: str,
    emblem: str,
    size: int = 672,
    seed: int | str = 0,
) -> Image.Image:
    """Render one product photo.

    Args:
        category: A key of :data:`SILHOUETTES`.
        colour: A key of :data:`COLOURS`.
        pattern: One of :data:`PATTERNS`.
        emblem: One of :data:`EMBLEMS`.
        size: Side of the square image in pixels.
        seed: Seeds the pose, scale, pattern phase and background (deterministic).
    """
    rng = random.Random(seed)
    tint = rng.randint(232, 246)
    bg = Image.new("RGB", (size, size), (tint, tint - rng.randint(0, 6), tint - rng.randint(0, 10)))
    scale = rng.uniform(0.62, 0.74)
    w = size * scale
    cx = size / 2 + rng.uniform(-0.04, 0.04) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
    box = (cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2)

    # soft floor shadow
    shadow = Image.new("L", (size, size), 0)
    ImageDraw.Draw(shadow).ellipse((box[0] + 0.1 * w, box[3] - 0.04 * w, box[2] - 0.1 * w, box[3] + 0.06 * w), fill=70)
    shadow = shadow.filter(ImageFilter.GaussianBlur(size / 60))
    bg.paste((120, 120, 125), mask=shadow)

    mask = Image.new("L", (size, size), 0)
    md = ImageDraw.Draw(mask)
    extra: list = []
    centre, radius = SILHOUETTES[category](md, box, extra)
    bg.paste(_texture(size, COLOURS[colour], pattern, rng), mask=mask)
    edge = mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
    bg.paste(INK, mask=edge)

    d = ImageDraw.Draw(bg)
    lw = max(3, int(size / 110))
    for kind, geo in extra:
        if kind == "line":
            d.line(geo, fill=INK, width=lw * 2)
        elif kind == "rect":
            d.rounded_rectangle(geo, radius=int(size / 60), outline=INK, width=lw)
        elif kind == "sole":
            d.rectangle(geo, fill=WHITE, outline=INK, width=lw)
        elif kind == "hook":
            x, y, r = geo
            d.arc((x - 2 * r, y - r, x, y + r), 0, 180, fill=INK, width=lw * 2)
    _emblem(d, emblem, centre, radius)
    return bg
