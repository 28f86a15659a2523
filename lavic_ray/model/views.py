"""Images -> LLaVA-Next pixel views, with the missing-image fallback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lavic_ray.data.images import check_image, load_rgb

log = logging.getLogger(__name__)


def pixel_views(image_processor, paths: Sequence[str | Path | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile each image into LLaVA-Next views.

    A missing or unreadable image is logged and replaced by a blank placeholder so
    the batch keeps its shape; ``present`` marks it False, which gives that image
    five zero vectors (the rule in :mod:`lavic_ray.model.lavic`).

    Returns:
        ``pixel_values (N, V, 3, H, W)``, ``image_sizes (N, 2)``, ``present (N,)``.
    """
    base = image_processor.crop_size["height"]
    images, present = [], []
    for p in paths:
        reason = "no image" if p is None else check_image(p)
        if reason is None:
            try:
                images.append(load_rgb(p))
                present.append(True)
                continue
            except OSError as e:
                reason = f"unreadable: {e}"
        log.warning("image %s: %s; using the no-image vectors", p, reason)
        images.append(Image.new("RGB", (base, base), (127, 127, 127)))
        present.append(False)
    out = image_processor(images, return_tensors="pt")
    return out["pixel_values"], out["image_sizes"], torch.tensor(present)
