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
                       max_new_tokens: int = 48, dtype: str = "float32") -> dict:
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
    colours = {c: (c,) for c in COLOURS}
    hits_c = hits_p = 0
    examples = []
    for item_id in item_ids:
        item = catalog[item_id]
        enc = builder.stage1(item.title, None, item_id)
        px, sizes, present = pixel_views(ck.image_processor, [item.primary_image.path if item.primary_image else None])
        vec = model.image_vectors(px, sizes, present)
        ids = torch.tensor([enc.input_ids])
        out = model.vlm.generate(inputs_embeds=model.embed(ids, vec), attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=ck.tokenizer.pad_token_id)
        text = ck.tokenizer.decode(out[0], skip_special_tokens=True)
        t = truth[item_id]
        hits_c += first_mentioned(text, colours) == t["colour"]
        hits_p += first_mentioned(text, PATTERN_WORDS) == t["pattern"]
        if len(examples) < 3:
            examples.append({"item_id": item_id, "truth": f"{t['colour']} {t['pattern']}", "generated": text.strip()})
    n = max(len(item_ids), 1)
    return {"items": len(item_ids), "colour_accuracy": hits_c / n, "pattern_accuracy": hits_p / n, "examples": examples}
