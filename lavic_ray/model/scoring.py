"""Candidate scoring with each shared prefix computed once, and free generation with ID parsing.

Both scorers take a *batch* of requests (a conversation and its candidate list
each) so that a serving replica or an evaluation loop amortises one forward pass
over many conversations. The prompts are left-padded into one prefix pass; the
KV cache rows are then gathered per candidate and the candidate continuations run
in right-padded chunks of at most ``max_rows`` rows (bounding cache memory on a
7B model), with position ids that continue each row's own prefix.

Listwise: the prompt (conversation + all candidates + answer cue) is the prefix;
the score of a candidate is the summed log-likelihood of its answer tokens, so
every candidate gets a score: ValidRatio is 1.0 by construction.

Pointwise: the conversation is the prefix; each candidate suffix (its 5 vectors,
its title, the question) continues it; the score is log P(" yes") - log P(" no")
at the end of the suffix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from lavic_ray.data.records import Turn
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.prompts import IGNORE, LETTERS, Encoded, PromptBuilder, collate

VectorLookup = Callable[[Sequence[str]], torch.Tensor]
#: One scoring request: the conversation and its ``(item_id, title)`` candidates.
Request = tuple[list[Turn], list[tuple[str, str]]]

DEFAULT_MAX_ROWS = 64


def _pad(seqs: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate([Encoded(s, [IGNORE] * len(s)) for s in seqs], pad, side)
    return batch.input_ids, batch.attention_mask


def _pad_id(builder: PromptBuilder) -> int:
    tok = builder.tok
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _prefix(model: LaViC, prefixes: list[list[int]], images: list[str], lookup: VectorLookup | None, pad: int,
            use_cache: bool = True):
    """One left-padded pass over the prefixes: (last-position logits, cache, mask, real lengths)."""
    device = next(model.parameters()).device
    ids, mask = _pad(prefixes, pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    vectors = lookup(images).to(device) if images else None
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, mask, vectors, position_ids=pos, use_cache=use_cache, logits_to_keep=1)
    return out.logits[:, -1].float(), out.past_key_values, mask, mask.sum(1)


def _continue(model: LaViC, past, mask: torch.Tensor, lengths: torch.Tensor, rows: list[int], conts: list[list[int]],
              vectors: torch.Tensor | None, pad: int, side: str = "right", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded continuations of the prefixes ``rows``; returns (logits, continuation mask).

    ``side="left"`` aligns every continuation's last token in the last column (then
    ``logits_to_keep=1`` skips the output layer everywhere else).
    """
    device = mask.device
    idx = torch.tensor(rows, device=device)
    cache = DynamicCache(ddp_cache_data=[(layer.keys[idx], layer.values[idx]) for layer in past.layers])
    ids, cmask = _pad(conts, pad, side)
    ids, cmask = ids.to(device), cmask.to(device)
    embeds = model.embed(ids, vectors)
    attn = torch.cat([mask[idx], cmask], dim=1)
    pos = lengths[idx][:, None] + (cmask.cumsum(-1) - 1).clamp(min=0)
    logits = model.vlm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True,
                       **kwargs).logits
    return logits, cmask


@torch.no_grad()
def score_listwise_batch(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                         max_rows: int = DEFAULT_MAX_ROWS) -> list[list[float]]:
    """Summed log-likelihood of each candidate's answer after its request's prompt."""
    if not requests:
        return []
    pad = _pad_id(builder)
    encs = [builder.listwise(turns, cands, None) for turns, cands in requests]
    first, past, mask, lengths = _prefix(model, [e.input_ids for e in encs], [k for e in encs for k in e.images], lookup, pad)
    first = F.log_softmax(first, dim=-1)
    answers = [builder.answer_ids(cands) for _, cands in requests]
    scores = [[float(first[b, a[0]]) for a in ans] for b, ans in enumerate(answers)]
    todo = [(b, i, a) for b, ans in enumerate(answers) for i, a in enumerate(ans) if len(a) > 1]
    for start in range(0, len(todo), max_rows):
        chunk = todo[start: start + max_rows]
        logits, _ = _continue(model, past, mask, lengths, [b for b, _, _ in chunk], [a[:-1] for _, _, a in chunk], None, pad)
        logp = F.log_softmax(logits.float(), dim=-1)
        for r, (b, i, a) in enumerate(chunk):
            scores[b][i] += float(sum(logp[r, j - 1, a[j]] for j in range(1, len(a))))
    return scores


def pointwise_log_probs(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                        max_rows: int | None = DEFAULT_MAX_ROWS, share_prefix: bool = True) -> tuple[torch.Tensor, int]:
    """log P(" yes") and log P(" no") at the end of every candidate's suffix.

    Differentiable: stage 2 trains on it (through the engine's forward, see
    :meth:`LaViC.forward`) and scoring calls it under ``no_grad``, so training and
    serving compute exactly the same thing.

    Args:
        requests: ``(turns, [(item_id, title), ...])`` each.
        max_rows: Candidate rows per continuation pass (None: all at once).
        share_prefix: Run each conversation once and continue every candidate from its
            KV cache. False runs each (conversation + candidate) as a sequence of its own:
            the same numbers, for gradient checkpointing (which drops caches).

    Returns:
        ``(total candidates, 2)``, request-major, candidates in list order; and the
        number of input tokens that ran (for throughput figures).
    """
    pad = _pad_id(builder)
    device = next(model.parameters()).device
    suffixes = [[builder.pointwise_suffix(i, t) for i, t in cands] for _, cands in requests]
    prefixes = [builder.pointwise_prefix(turns, max(len(s) for s in suf) + 2)[0] for (turns, _), suf in zip(requests, suffixes)]
    yes_no = torch.tensor(builder.yes_no_ids(), device=device)
    todo = [(b, i) for b, (_, cands) in enumerate(requests) for i in range(len(cands))]
    step = max_rows or len(todo)
    past = None
    n_suffix = sum(len(suffixes[b][i]) for b, i in todo)
    if share_prefix:
        _, past, mask, lengths = _prefix(model, prefixes, [], None, pad)
        tokens = sum(map(len, prefixes)) + n_suffix
    else:
        tokens = sum(len(prefixes[b]) for b, _ in todo) + n_suffix
    out = []
    for start in range(0, len(todo), step):
        chunk = todo[start: start + step]
        ids = [requests[b][1][i][0] for b, i in chunk]
        if past is not None:
            vectors = lookup(ids).to(device) if builder.use_images else None
            logits, _ = _continue(model, past, mask, lengths, [b for b, _ in chunk], [suffixes[b][i] for b, i in chunk],
                                  vectors, pad, side="left", logits_to_keep=1)
            last = logits[:, -1]
        else:
            last, _, _, _ = _prefix(model, [prefixes[b] + suffixes[b][i] for b, i in chunk], ids if builder.use_images else [],
                                    lookup, pad, use_cache=False)
        out.append(F.log_softmax(last.float(), dim=-1)[:, yes_no])
    return (torch.cat(out) if out else torch.zeros(0, 2, device=device)), tokens


@torch.no_grad()
def score_pointwise_batch(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                          max_rows: int = DEFAULT_MAX_ROWS) -> list[list[float]]:
    """log P(yes) - log P(no) per candidate, each conversation prefix computed once."""
    if not requests:
        return []
    lp, _ = pointwise_log_probs(model, builder, requests, lookup, max_rows)
    margins = (lp[:, 0] - lp[:, 1]).tolist()
    out, n = [], 0
    for _, cands in requests:
        out.append(margins[n: n + len(cands)])
        n += len(cands)
    return out


def score_batch(model: LaViC, builder: PromptBuilder, formulation: str, requests: Sequence[Request],
                lookup: VectorLookup | None, max_rows: int = DEFAULT_MAX_ROWS) -> list[list[float]]:
    """Scores for a batch of requests with the formulation the stage-2 run was trained with."""
    if formulation == "listwise":
        return score_listwise_batch(model, builder, requests, lookup, max_rows)
    if formulation == "pointwise":
        return score_pointwise_batch(model, builder, requests, lookup, max_rows)
    raise ValueError(f"unknown formulation {formulation!r}; use 'listwise' or 'pointwise'")


def score_listwise(model: LaViC, builder: PromptBuilder, turns: list[Turn], candidates: list[tuple[str, str]],
                   lookup: VectorLookup | None) -> list[float]:
    """One request of :func:`score_listwise_batch`."""
    return score_listwise_batch(model, builder, [(turns, candidates)], lookup)[0]


def score_pointwise(model: LaViC, builder: PromptBuilder, turns: list[Turn], candidates: list[tuple[str, str]],
                    lookup: VectorLookup | None) -> list[float]:
    """One request of :func:`score_pointwise_batch`."""
    return score_pointwise_batch(model, builder, [(turns, candidates)], lookup)[0]


_ID_RE = re.compile(r"\b[0-9A-Z]{10}\b")


def parse_answer(text: str, candidates: Sequence[str], catalog_ids: set[str] | None = None, letters: bool = False) -> list[str]:
    """Item IDs named in generated text, in order.

    The paper's parser only matched ``B0...`` ASINs and missed ISBN-style IDs; any
    10-character ID the catalog (or the candidate list) knows is accepted here.
    With ``letters``, a leading letter A.. maps to the candidate at that position.
    """
    if letters:
        m = re.search(r"\b([A-Z])\b", text)
        if m and LETTERS.index(m.group(1)) < len(candidates):
            return [candidates[LETTERS.index(m.group(1))]]
        return []
    known = set(candidates) | (catalog_ids or set())
    return [t for t in dict.fromkeys(_ID_RE.findall(text.upper())) if t in known]


@torch.no_grad()
def generate_batch(model: LaViC, builder: PromptBuilder, encoded: list, lookup: VectorLookup | None,
                   max_new_tokens: int = 16) -> list[str]:
    """Greedy generation for a batch of prompts, left-padded so every row ends at the last column."""
    device = next(model.parameters()).device
    tok = builder.tok
    batch = collate(encoded, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, "left").to(device)
    vectors = lookup(batch.images).to(device) if batch.images else None
    embeds = model.embed(batch.input_ids, vectors)
    out = model.vlm.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.batch_decode(out, skip_special_tokens=True)


def generate_answer(model: LaViC, builder: PromptBuilder, turns: list[Turn], candidates: list[tuple[str, str]],
                    lookup: VectorLookup | None, max_new_tokens: int = 16) -> str:
    """Greedy free generation after the listwise prompt (for parity with the paper)."""
    return generate_batch(model, builder, [builder.listwise(turns, candidates, None)], lookup, max_new_tokens)[0]
