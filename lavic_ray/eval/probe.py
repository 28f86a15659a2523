"""Stage-1 probe: does the image survive compression into 5 vectors?

Descriptions are generated from the title and the 5 vectors alone; the probe
checks whether each names the image's true value of every decisive attribute
(a synthetic catalog's ``synth_truth.json``, and the words its manifest says name
each value: colour and pattern in the default scheme, the pair ``synth.decisive``
names in ``gadgets``, motif and build by default). Run it before and after stage 1.

A catalog without attribute truth is probed by its descriptions' words instead
(:func:`distinctive_words`, :func:`word_readout`): which ones the model names from
the image, against the image's own description.
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
    dataset = Dataset.from_config(cfg.dataset)
    truth = dataset.attribute_truth()
    vocab = dataset.attribute_vocabulary()
    if truth is None or vocab is None:
        raise InputMissing(f"the probe needs the attribute truth of a synthetic catalog: {dataset.truth} or "
                           f"{dataset.manifest} is missing")
    texts = vector_descriptions(cfg, item_ids, adapter, max_new_tokens, batch_size)
    return score_descriptions(item_ids, texts, truth, vocab)


@torch.no_grad()
def vector_descriptions(cfg: LavicConfig, item_ids: list[str], adapter: str | Path | None = None,
                        max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
    """Greedy descriptions of ``item_ids`` (in their order) from each one's title and the 5 vectors of its
    primary image, with the stage-1 prompt: what the vectors tell the LLM (any catalog; no truth needed)."""
    from lavic_ray.model.build import build_lavic, prompt_builder
    from lavic_ray.model.scoring import generate_batch
    from lavic_ray.model.views import pixel_views

    catalog = Dataset.from_config(cfg.dataset).catalog()
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
    return texts


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


# ------------------------------------------------------------------ without attribute truth: the description's words
#
# A user's catalog has no attribute truth, only each image's description. What sets one item's description apart
# from another's is its distinctive words (a colour, a material, a shape - and also any phrasing that varies at
# random); a word the model names when the image's description has it, and not otherwise, is one it reads from
# the image.

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]")
#: English function words: they vary with a sentence's phrasing, never with what an image shows
FUNCTION_WORDS = frozenset(
    "about above after all also an and any are as at be been but by can could do does each for from had has have he her "
    "his how if in into is it it's its just more most my no not of off on one or our out over she so some such than that "
    "the their them then there these they this those through to too under up very was we were what when where which "
    "while who why will with would you your".split())


def words_of(text: str) -> set[str]:
    """The lower-cased content words of ``text`` (letters, inner hyphens or apostrophes; two letters or more; no
    :data:`FUNCTION_WORDS`)."""
    return set(_WORD.findall(text.lower())) - FUNCTION_WORDS


def distinctive_words(descriptions: list[str], requests: list[str] | None = None, min_docs: int = 3,
                      max_share: float = 0.5) -> list[str]:
    """The words that set descriptions apart: in at least ``min_docs`` of them and at most ``max_share`` (what
    nearly every description says - its template, the category of a one-category catalog - is left out); with
    ``requests`` (the conversations' texts), only those that ``min_docs`` of the requests use too: a word no one
    asks for (a description's random phrasing, say) decides nothing."""
    def counts(texts: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in texts:
            for w in words_of(t):
                out[w] = out.get(w, 0) + 1
        return out

    asked = counts(requests) if requests is not None else None
    return sorted(w for w, c in counts(descriptions).items() if min_docs <= c <= max_share * len(descriptions)
                  and (asked is None or asked.get(w, 0) >= min_docs))


def word_readout(true_texts: list[str], generated: list[str], words: list[str], min_items: int = 3) -> dict[str, list[int]]:
    """Per word of ``words`` in at least ``min_items`` of ``true_texts``: ``[items whose true text has it, of those
    the generated text names it in, items whose true text lacks it, of those the generated text names it in]``."""
    if len(true_texts) != len(generated):
        raise ValueError(f"{len(true_texts)} true texts but {len(generated)} generated ones")
    truth = [words_of(t) for t in true_texts]
    said = [words_of(g) for g in generated]
    out = {}
    for w in words:
        has = [w in t for t in truth]
        n_with = sum(has)
        if n_with < min_items:
            continue
        hits = sum(h and w in s for h, s in zip(has, said))
        false = sum(not h and w in s for h, s in zip(has, said))
        out[w] = [n_with, hits, len(has) - n_with, false]
    return out


def names_word(counts: list[int], margin: float = 0.5) -> bool:
    """Whether a :func:`word_readout` row says the word is read from the image: named for at least ``margin``
    more of the items whose description has it than of those whose description does not (hit rate minus
    false-alarm rate, Youden's J)."""
    n_with, hits, n_without, false = counts
    return hits / max(n_with, 1) - false / max(n_without, 1) >= margin


def word_probe_items(catalog, n: int = 48) -> list[str]:
    """``n`` items spread evenly over the catalog's sorted IDs, each with a described primary image file."""
    ids = sorted(it.item_id for it in catalog
                 if it.primary_image is not None and it.primary_image.path is not None and it.primary_image.description)
    if len(ids) <= n:
        return ids
    return [ids[k * len(ids) // n] for k in range(n)]
