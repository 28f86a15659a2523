"""Images -> LLaVA-Next pixel views, with the missing-image fallback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lavic_ray.data.images import check_image, load_rgb

log = logging.getLogger(__name__)


def pixel_views(image_processor, paths: Sequence[str | Path | None], missing: str = "zeros") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile each image into LLaVA-Next views.

    A missing or unreadable image is logged and replaced so the batch keeps its shape:
    with ``missing="zeros"`` by a blank placeholder that ``present`` marks False, which
    gives that image five zero vectors (the rule in :mod:`lavic_ray.model.lavic`); with
    ``missing="white_image"`` by a white square image of the tower's input size, tiled and
    run like any image (``present`` True) - the reference scripts' fallback.

    Returns:
        ``pixel_values (N, V, 3, H, W)``, ``image_sizes (N, 2)``, ``present (N,)``.
    """
    if missing not in ("zeros", "white_image"):
        raise ValueError(f"missing must be 'zeros' or 'white_image', got {missing!r}")
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
        log.warning("image %s: %s; using the %s fallback", p, reason, missing)
        white = missing == "white_image"
        images.append(Image.new("RGB", (base, base), (255, 255, 255) if white else (127, 127, 127)))
        present.append(white)
    out = image_processor(images, return_tensors="pt")
    return out["pixel_values"], out["image_sizes"], torch.tensor(present)


def num_real_views(config, image_sizes: torch.Tensor, cap: int = 5) -> torch.Tensor:
    """Real LLaVA-Next views per image (1 + grid crops), from ``(N, 2)`` (height, width) sizes."""
    from transformers.models.llava_next.modeling_llava_next import (
        image_size_to_num_patches,
    )

    n = [image_size_to_num_patches(tuple(int(x) for x in s), config.image_grid_pinpoints, config.vision_config.image_size)
         for s in image_sizes.tolist()]
    return torch.tensor(n, dtype=torch.long, device=image_sizes.device).clamp(1, cap)


class ViewCache:
    """Pixel views by image path, decoded once and kept (oldest dropped past ``max_items``).

    :meth:`get` pads a batch to its largest view count, so images tiled in
    different calls (3, 4 or 5 views) stack together.
    """

    def __init__(self, image_processor, max_items: int = 4096, missing: str = "zeros"):
        from collections import OrderedDict

        self.image_processor = image_processor
        self.missing = missing
        self.max_items = max_items
        self._views: OrderedDict = OrderedDict()

    def get(self, paths: Sequence[str | Path | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in paths if p not in self._views))
        if missing:
            px, sizes, present = pixel_views(self.image_processor, missing, self.missing)
            for n, p in enumerate(missing):
                self._views[p] = (px[n], sizes[n], present[n])
                if len(self._views) > self.max_items:
                    self._views.popitem(last=False)
        rows = [self._views[p] for p in paths]
        width = max(r[0].shape[0] for r in rows)
        px = torch.zeros(len(rows), width, *rows[0][0].shape[1:])
        for n, r in enumerate(rows):
            px[n, : r[0].shape[0]] = r[0]
        return px, torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows])
