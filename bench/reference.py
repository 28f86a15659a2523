"""The reference implementation's approach to stage 1, stage 2 and serving, re-implemented for benchmarks.

The paper's public scripts (PyTorch Lightning) do, per training step:

* load the step's images from disk with PIL and run the LLaVA-Next image processor
  inside the step (the collate function);
* stage 2: run the frozen vision tower on *every* view of all 10 candidates (the
  processor pads each batch to its largest view count, and padded views run too),
  take each view's [CLS], project it;
* write the vectors into the token embeddings with a per-token Python loop (one
  ``.item()`` and one indexed copy per placeholder);
* train stage 2 at batch size 1; stage 1 at batch size 4;
* at test time, per query, the same vision work again before scoring.

This module does the same work with this project's model objects (the same LaViC
wrapper, LoRA targets, dtype and attention kernel), so that a benchmark compares the
approaches and nothing else. Two things are kept *in the reference's favour*: its
prompts are this project's token ids (it tokenised every prompt twice per step), and
its stage-2 step runs without gradient checkpointing when ours may use it.

Written from the description of those scripts; no code copied.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from lavic_ray.model.lavic import NUM_VECTORS, LaViC


def load_images(paths: list[str | Path | None], base: int) -> list[Image.Image]:
    """Images read from disk on every call (a blank one where a file is missing), as their dataset did."""
    out = []
    for p in paths:
        try:
            out.append(Image.open(p).convert("RGB") if p else Image.new("RGB", (base, base), (255, 255, 255)))
        except OSError:
            out.append(Image.new("RGB", (base, base), (255, 255, 255)))
    return out


def vision_cls(model: LaViC, pixel_values: torch.Tensor, grad: bool) -> torch.Tensor:
    """Projected [CLS] of every view, padded views included: ``(N, V, hidden)``."""
    base = model.base
    n, v = pixel_values.shape[:2]
    views = pixel_values.reshape(n * v, *pixel_values.shape[2:]).to(base.dtype)
    with torch.set_grad_enabled(grad):
        hidden = base.model.vision_tower(views).last_hidden_state[:, 0]
    return base.model.multi_modal_projector(hidden).reshape(n, v, -1)


def splice_loop(model: LaViC, input_ids: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the placeholders overwritten one token at a time (per-token loop).

    ``cls`` is ``(B, images_per_row * views, hidden)``: row ``b``'s vectors in order.
    """
    embeds = model.base.get_input_embeddings()(input_ids.masked_fill(input_ids == model.image_token_id, 0))
    embeds = embeds.clone()
    for b in range(input_ids.shape[0]):
        positions = torch.nonzero(input_ids[b] == model.image_token_id, as_tuple=False).squeeze(-1)
        for k in range(min(len(positions), cls.shape[1])):
            col = positions[k].item()
            embeds[b, col, :] = cls[b, k, :].to(embeds.dtype)
    return embeds


def per_row_vectors(cls: torch.Tensor, images_per_row: int) -> torch.Tensor:
    """``(B * images, V, h)`` -> ``(B, images * 5, h)``: the first 5 views of each image, in order."""
    n, v, h = cls.shape
    if v < NUM_VECTORS:  # fewer views than slots: repeat the base view (the same rule LaViC states)
        cls = torch.cat([cls, cls[:, :1].expand(n, NUM_VECTORS - v, h)], dim=1)
    return cls[:, :NUM_VECTORS].reshape(n // images_per_row, images_per_row * NUM_VECTORS, h)


def stage2_step(model: LaViC, image_processor, encoded, image_paths: list[str | Path | None], optimizer=None) -> tuple[float, int]:
    """One reference stage-2 step at batch size 1: (loss, input tokens). ``encoded``: one listwise prompt."""
    device = next(model.parameters()).device
    base = image_processor.crop_size["height"]
    px = image_processor(load_images(image_paths, base), return_tensors="pt")["pixel_values"].to(device)
    with torch.no_grad():  # frozen tower, re-run every step
        cls = vision_cls(model, px, grad=False)
    ids = torch.tensor([encoded.input_ids], device=device)
    labels = torch.tensor([encoded.labels], device=device)
    embeds = splice_loop(model, ids, per_row_vectors(cls, len(image_paths)))
    out = model.vlm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), labels=labels)
    if optimizer is not None:
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(out.loss), ids.shape[1]


def stage1_step(model: LaViC, image_processor, batch, image_paths: list[str | Path | None], optimizer=None) -> tuple[float, int]:
    """One reference stage-1 step: images loaded and tiled in the step, every padded view through
    the (LoRA) tower with gradients, per-token splice. ``batch``: a right-padded collated Batch."""
    device = next(model.parameters()).device
    base = image_processor.crop_size["height"]
    px = image_processor(load_images(image_paths, base), return_tensors="pt")["pixel_values"].to(device)
    cls = vision_cls(model, px, grad=True)
    ids = batch.input_ids.to(device)
    embeds = splice_loop(model, ids, per_row_vectors(cls, 1))
    out = model.vlm(inputs_embeds=embeds, attention_mask=batch.attention_mask.to(device), labels=batch.labels.to(device))
    if optimizer is not None:
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(out.loss), int(batch.attention_mask.sum())


@torch.no_grad()
def rerank(model: LaViC, image_processor, encoded, answer_ids: list[list[int]], image_paths: list[str | Path | None]) -> list[float]:
    """A naive reranker: re-encode every candidate's views for the request, then score each
    candidate's ID by its log-likelihood after the prompt (one full pass per candidate)."""
    device = next(model.parameters()).device
    base = image_processor.crop_size["height"]
    px = image_processor(load_images(image_paths, base), return_tensors="pt")["pixel_values"].to(device)
    cls = vision_cls(model, px, grad=False)
    ids = torch.tensor([encoded.input_ids], device=device)
    embeds = splice_loop(model, ids, per_row_vectors(cls, len(image_paths)))
    scores = []
    for ans in answer_ids:
        a = torch.tensor([ans], device=device)
        full = torch.cat([embeds, model.base.get_input_embeddings()(a)], dim=1)
        logp = torch.log_softmax(model.vlm(inputs_embeds=full).logits[0, ids.shape[1] - 1: -1].float(), dim=-1)
        scores.append(float(logp.gather(1, a[0][:, None]).sum()))
    return scores
