"""Stage-1 probe: does the image survive compression into 5 vectors?

Descriptions are generated from the title and the 5 vectors alone; the probe
checks whether each names the image's true colour and pattern (the synthetic
catalog's ``synth_truth.json``). Run it before and after stage 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lavic_ray.data.layout import Catalog
from lavic_ray.data.render import COLOURS

PATTERN_WORDS = {"solid": ("solid", "unpatterned", "plain"), "striped": ("stripe",), "polka-dot": ("polka", "dots"),
                 "checkered": ("checker", "checked")}


def first_mentioned(text: str, vocab: dict[str, tuple[str, ...]]) -> str | None:
    """The label whose word appears first in ``text`` (None if none does)."""
    text = text.lower()
    best, pos = None, len(text) + 1
    for label, words in vocab.items():
        for w in words:
            m = re.search(r"\b" + re.escape(w), text)
            if m and m.start() < pos:
                best, pos = label, m.start()
    return best


@torch.no_grad()
def probe_descriptions(checkpoint: str, catalog_root: str | Path, item_ids: list[str], adapter: str | Path | None = None,
                       max_new_tokens: int = 32, dtype: str = "float32", batch_size: int = 8) -> dict:
    """Generate descriptions from 5 vectors and score their colour and pattern words.

    Returns:
        ``colour_accuracy``, ``pattern_accuracy``, ``items`` and a few ``examples``.
    """
    from lavic_ray.model.checkpoints import load_checkpoint
    from lavic_ray.model.lavic import LaViC
    from lavic_ray.model.lora import load_lora
    from lavic_ray.model.prompts import PromptBuilder
    from lavic_ray.model.views import pixel_views

    root = Path(catalog_root)
    truth = json.loads((root / "synth_truth.json").read_text())["items"]
    catalog = Catalog.load(root)
    ck = load_checkpoint(checkpoint, dtype)
    vlm = load_lora(ck.model, adapter) if adapter else ck.model
    model = LaViC(vlm, ck.image_token_id).eval()
    builder = PromptBuilder(ck.tokenizer, ck.image_token_id)
    from lavic_ray.model.scoring import generate_batch

    colours = {c: (c,) for c in COLOURS}
    hits_c = hits_p = 0
    examples = []
    for start in range(0, len(item_ids), batch_size):
        chunk = item_ids[start: start + batch_size]
        items = [catalog[i] for i in chunk]
        px, sizes, present = pixel_views(ck.image_processor, [it.primary_image.path if it.primary_image else None for it in items])
        vectors = model.image_vectors(px, sizes, present)
        texts = generate_batch(model, builder, [builder.stage1(it.title, None, it.item_id) for it in items],
                               lambda keys: vectors, max_new_tokens)
        for item_id, text in zip(chunk, texts):
            t = truth[item_id]
            hits_c += first_mentioned(text, colours) == t["colour"]
            hits_p += first_mentioned(text, PATTERN_WORDS) == t["pattern"]
            if len(examples) < 3:
                examples.append({"item_id": item_id, "truth": f"{t['colour']} {t['pattern']}", "generated": text.strip()})
    n = max(len(item_ids), 1)
    return {"items": len(item_ids), "colour_accuracy": hits_c / n, "pattern_accuracy": hits_p / n, "examples": examples}
