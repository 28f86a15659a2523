"""Stage-1 probe: does the image survive compression into 5 vectors?

Descriptions are generated from the title and the 5 vectors alone; the probe
checks whether each names the image's true value of every decisive attribute
(a synthetic catalog's ``synth_truth.json``, and the words its manifest says name
each value: colour and pattern in the default scheme, motif and build in
``gadgets``). Run it before and after stage 1.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from lavic_ray.config import LavicConfig
from lavic_ray.data.dataset import Dataset
from lavic_ray.errors import InputMissing


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
def probe_descriptions(cfg: LavicConfig, item_ids: list[str], adapter: str | Path | None = None,
                       max_new_tokens: int = 32, batch_size: int = 8) -> dict:
    """Generate descriptions from 5 vectors and score the words naming each decisive attribute.

    Args:
        cfg: The configuration: ``dataset`` (a synthetic catalog, with its attribute truth) and
            ``model`` (the model is built as every other step builds it).
        item_ids: The items to probe.
        adapter: A stage-1 vision adapter (None: the vision side before stage 1).

    Returns:
        :func:`score_descriptions` of the generated descriptions.
    """
    from lavic_ray.model.build import build_lavic, prompt_builder
    from lavic_ray.model.scoring import generate_batch
    from lavic_ray.model.views import pixel_views

    dataset = Dataset.from_config(cfg.dataset)
    truth = dataset.attribute_truth()
    vocab = dataset.attribute_vocabulary()
    if truth is None or vocab is None:
        raise InputMissing(f"the probe needs the attribute truth of a synthetic catalog: {dataset.truth} or "
                           f"{dataset.manifest} is missing")
    catalog = dataset.catalog()
    device = cfg.eval.resources.resolved_device()
    model, ck = build_lavic(cfg.model, adapter=adapter, device=device)
    builder = prompt_builder(ck, cfg.prompts)

    texts = []
    for start in range(0, len(item_ids), batch_size):
        items = [catalog[i] for i in item_ids[start: start + batch_size]]
        px, sizes, present = pixel_views(ck.image_processor, [it.primary_image.path if it.primary_image else None for it in items],
                                         cfg.model.missing_image)
        vectors = model.image_vectors(px.to(device), sizes.to(device), present.to(device))
        texts += generate_batch(model, builder, [builder.stage1(it.title, None, it.item_id) for it in items],
                                lambda keys: vectors, max_new_tokens)
    return score_descriptions(item_ids, texts, truth, vocab)


def score_descriptions(item_ids: list[str], texts: list[str], truth: dict[str, dict],
                       vocab: dict[str, dict[str, list[str]]]) -> dict:
    """Per decisive attribute, the share of ``texts`` (one per item) naming the item's true value first.

    Returns:
        ``items``, ``attributes``, ``<attribute>_accuracy``, ``<attribute>_chance`` (one over its number of
        values) and a few ``examples``.
    """
    hits = dict.fromkeys(vocab, 0)
    for item_id, text in zip(item_ids, texts):
        for attr, words in vocab.items():
            hits[attr] += first_mentioned(text, words) == truth[item_id][attr]
    examples = [{"item_id": i, "truth": " ".join(truth[i][a] for a in vocab), "generated": t.strip()}
                for i, t in list(zip(item_ids, texts))[:3]]
    n = max(len(item_ids), 1)
    return {"items": len(item_ids), "attributes": list(vocab), **{f"{a}_accuracy": hits[a] / n for a in vocab},
            **{f"{a}_chance": 1 / len(vocab[a]) for a in vocab}, "examples": examples}


def near_chance(result: dict) -> dict[str, tuple[float, float]]:
    """The attributes a probe result names no better than a guess: ``{attribute: (accuracy, chance)}``.

    Chance is one over the attribute's number of values (a result from before it was recorded is skipped);
    "no better" is below chance plus two standard errors of a guessing probe over the same number of items.
    """
    n = result.get("items", 0)
    out = {}
    for a in result.get("attributes", []):
        chance, acc = result.get(f"{a}_chance"), result.get(f"{a}_accuracy")
        if chance is None or acc is None or not n:
            continue
        if acc < chance + 2 * math.sqrt(chance * (1 - chance) / n):
            out[a] = (acc, chance)
    return out
