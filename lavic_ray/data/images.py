"""Image I/O shared by the validator, the synthetic catalog and the pipelines."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: Pillow's own decompression-bomb threshold would only warn below 2x; we refuse above this.
MAX_PIXELS = 89_478_485


def check_image(path: str | Path, decode: bool = False) -> str | None:
    """Why an image file cannot be used, or None when it can.

    Args:
        path: The image file.
        decode: Decode every pixel (catches truncated files) instead of only
            checking the header and structure, which is much faster.

    Returns:
        A short reason (``"missing"``, ``"empty file"``, ``"unreadable: ..."``) or None.
    """
    p = Path(path)
    if not p.is_file():
        return "missing"
    if p.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                return f"unreadable: {w}x{h} pixels exceeds the {MAX_PIXELS} pixel limit"
            if decode:
                im.load()
            else:
                im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable: {e}"
    return None


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image into RGB (grayscale, CMYK, palette and alpha images are converted)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            return bg
        return im.convert("RGB")
