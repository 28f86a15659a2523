"""Candidate scoring with each shared prefix computed once, and free generation with ID parsing.

Both scorers take a *batch* of requests (a conversation and its candidate list
each) so that a serving replica or an evaluation loop amortises one forward pass
over many conversations, at most ``max_rows`` candidates per pass (bounding
memory on a 7B model).

Listwise: the prompt (conversation + all candidates + answer cue) is the prefix;
each candidate's answer (its ID, or letter, and EOS) is its continuation, and its
score is the answer's summed log-likelihood, so every candidate gets a score:
ValidRatio is 1.0 by construction.

Pointwise: the conversation is the prefix; each candidate suffix (its 5 vectors,
its title, the question) continues it; the score is log P(" yes") - log P(" no")
at the end of the suffix.

Three ways to share a prefix among its continuations give the same numbers
(``sharing``, ``stage2.prefix_sharing``):

* ``packed`` (the default): one row per request, the prefix followed by every
  continuation, with a block attention mask (a continuation sees the prefix and
  itself, never another one) and position ids that restart after the prefix for
  each continuation. One forward pass, no KV-cache copies, and it works under
  gradient checkpointing. It needs an attention kernel that takes an arbitrary
  mask (SDPA, eager); FlashAttention-2 does not, so ``auto`` picks ``cache`` there.
* ``cache``: the prefixes run once (left-padded), their KV caches are gathered per
  continuation and the continuations run from them.
* ``none``: each prefix + continuation is a sequence of its own.

Pointwise training (stage 2) runs through :func:`pointwise_log_probs` with the
same modes; listwise training needs none of this (one answer per prompt).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import get_args

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from lavic_ray.config import PrefixSharing
from lavic_ray.errors import InvalidInput
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.prompts import IGNORE, LETTERS, ConvInput, Encoded, PromptBuilder, collate

VectorLookup = Callable[[Sequence[str]], torch.Tensor]
#: One scoring request: the conversation and its ``(item_id, title)`` candidates.
Request = tuple[ConvInput, list[tuple[str, str]]]

DEFAULT_MAX_ROWS = 64


def _pad(seqs: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate([Encoded(s, [IGNORE] * len(s)) for s in seqs], pad, side)
    return batch.input_ids, batch.attention_mask


def _prefix(model: LaViC, prefixes: list[list[int]], images: list[str], lookup: VectorLookup | None, pad: int):
    """One left-padded pass over the prefixes: (last-position logits, cache, mask, real lengths)."""
    device = next(model.parameters()).device
    ids, mask = _pad(prefixes, pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    vectors = lookup(images).to(device) if images else None
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, mask, vectors, position_ids=pos, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), out.cache, mask, mask.sum(1)


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
    logits = model.vlm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True,
                       **kwargs).logits
    return logits, cmask


@torch.no_grad()
def score_listwise_batch(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                         max_rows: int = DEFAULT_MAX_ROWS, sharing: str = "auto") -> list[list[float]]:
    """Summed log-likelihood of each candidate's answer after its request's prompt.

    ``sharing`` as in the module docs: ``packed`` puts every candidate's answer after
    the prompt in one row (block mask), ``cache`` continues each answer from a copy of
    the prompt's KV cache, ``none`` runs prompt + answer per candidate.
    """
    if not requests:
        return []
    mode = resolve_sharing(model, sharing)
    pad = builder.pad_id
    device = next(model.parameters()).device
    encs, answers = zip(*(builder.listwise_answers(conv, cands) for conv, cands in requests))
    if mode == "cache":
        first, past, mask, lengths = _prefix(model, [e.input_ids for e in encs], [k for e in encs for k in e.images], lookup, pad)
        first = F.log_softmax(first, dim=-1)
        scores = [[float(first[b, a[0]]) for a in ans] for b, ans in enumerate(answers)]
        todo = [(b, i, a) for b, ans in enumerate(answers) for i, a in enumerate(ans) if len(a) > 1]
        for start in range(0, len(todo), max_rows):
            chunk = todo[start: start + max_rows]
            logits, _ = _continue(model, past, mask, lengths, [b for b, _, _ in chunk], [a[:-1] for _, _, a in chunk], None, pad)
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, (b, i, a) in enumerate(chunk):
                scores[b][i] += float(sum(logp[r, j - 1, a[j]] for j in range(1, len(a))))
        return scores
    # packed: one row per request, every answer (less its last token) after the prompt;
    # none: one row per candidate, the prompt and that answer
    scores = [[0.0] * len(ans) for ans in answers]
    for rows in _row_groups(list(map(len, answers)), mode, max_rows):
        images = [k for b, _ in rows for k in encs[b].images]
        vectors = lookup(images).to(device) if images else None
        hidden, starts = _packed_hidden(model, [encs[b].input_ids for b, _ in rows],
                                        [[answers[b][i][:-1] for i in cands] for b, cands in rows], vectors, pad)
        at, target, owner = [], [], []  # the position predicting each answer token, the token, its candidate
        for (b, cands), st in zip(rows, starts):
            for s, i in enumerate(cands):
                a = answers[b][i]
                at += [st[1] - 1] + [st[1 + s] + j for j in range(len(a) - 1)]  # the prompt's last token, then the answer's
                target += a
                owner += [(b, i)] * len(a)
        logp = F.log_softmax(model.base.lm_head(hidden[torch.tensor(at, dtype=torch.long, device=device)]).float(), dim=-1)
        picked = logp.gather(1, torch.tensor(target, device=device)[:, None])[:, 0].tolist()
        for (b, i), v in zip(owner, picked):
            scores[b][i] += v
    return scores


SHARING = get_args(PrefixSharing)


def _attn_impl(model: LaViC) -> str:
    """The language model's attention implementation (transformers' default, SDPA, when unset)."""
    return str(getattr(model.base.config.get_text_config(), "_attn_implementation", None) or "sdpa")


def resolve_sharing(model: LaViC, sharing: str = "auto", gradient_checkpointing: bool = False) -> str:
    """The prefix-sharing mode ``auto`` stands for on this model (see the module docs)."""
    if sharing not in SHARING:
        raise InvalidInput(f"unknown prefix sharing {sharing!r}; use one of {', '.join(SHARING)}")
    if sharing != "auto":
        if sharing == "cache" and gradient_checkpointing:
            raise InvalidInput("prefix sharing 'cache' keeps KV caches, which gradient checkpointing drops: use 'packed' or 'none'")
        return sharing
    if "flash" not in _attn_impl(model):
        return "packed"
    return "none" if gradient_checkpointing else "cache"


def _packed_hidden(model: LaViC, prefixes: list[list[int]], suffixes: list[list[list[int]]], vectors: torch.Tensor | None,
                   pad: int) -> tuple[torch.Tensor, list[list[int]]]:
    """Final hidden states with each request's suffixes packed after its prefix.

    Row ``b`` is ``prefix_b + suffix_b1 + suffix_b2 + ...`` (right-padded); a suffix
    token attends to its own prefix and to the earlier tokens of its own suffix, and
    its position continues the prefix as if the suffix came right after it. A batch
    whose rows hold at most one suffix each is plain causal attention and gets the
    plain padding mask (so any attention kernel runs it, FlashAttention-2 included).

    Returns the hidden states flattened to ``(rows x length, width)`` and, per row,
    the flat index where each segment starts (the prefix first, then the suffixes).
    """
    device = next(model.parameters()).device
    rows = [p + [t for s in suf for t in s] for p, suf in zip(prefixes, suffixes)]
    ids, pad_mask = _pad(rows, pad, "right")
    ids = ids.to(device)
    B, T = ids.shape
    # segment lengths per row: the prefix (segment 0), each suffix (1..n), the padding (-1)
    seg_lens = [[len(p)] + [len(s) for s in suf] + [T - len(r)] for p, suf, r in zip(prefixes, suffixes, rows)]
    seg_ids = [list(range(len(sl) - 1)) + [-1] for sl in seg_lens]
    flat_lens = torch.tensor([n for sl in seg_lens for n in sl])
    flat_ids = torch.tensor([i for si in seg_ids for i in si])
    starts = torch.cumsum(flat_lens, 0) - flat_lens
    seg = torch.repeat_interleave(flat_ids, flat_lens)
    within = torch.arange(B * T) - torch.repeat_interleave(starts, flat_lens)
    prefix_len = torch.repeat_interleave(torch.tensor([len(p) for p in prefixes]), T)
    pos = torch.where(seg > 0, prefix_len + within, within).view(B, T).to(device)  # suffixes continue the prefix
    embeds = model.embed(ids, vectors)
    if max(map(len, suffixes), default=0) <= 1:
        mask = pad_mask.to(device)
    else:
        seg = seg.view(B, T).to(device)
        q, k = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
        sk, sq = seg[:, None, :], seg[:, :, None]
        allow = (k <= q) & (sk >= 0) & ((sk == 0) | (sk == sq))
        allow = allow | torch.eye(T, dtype=torch.bool, device=device)  # padding queries see themselves (no empty rows)
        mask = allow[:, None]
        if _attn_impl(model) == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=embeds.dtype, device=device).masked_fill(~mask, torch.finfo(embeds.dtype).min)
    hidden = model.base.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state
    row_starts, n = [], 0
    for sl in seg_lens:
        row_starts.append(starts[n: n + len(sl) - 1].tolist())
        n += len(sl)
    return hidden.reshape(B * T, -1), row_starts


def _row_groups(sizes: list[int], mode: str, step: int) -> list[list[tuple[int, list[int]]]]:
    """The packed passes for requests with ``sizes`` candidates: lists of rows ``(request, its candidates in the row)``.

    ``packed``: a row per request, all its candidates; ``none``: a row per candidate.
    Consecutive rows go together up to ``step`` candidates a pass (a row is never
    split); rows without candidates are dropped.
    """
    rows = ([(b, list(range(n))) for b, n in enumerate(sizes) if n] if mode == "packed"
            else [(b, [i]) for b, n in enumerate(sizes) for i in range(n)])
    groups, group, count = [], [], 0
    for row in rows:
        if group and count + len(row[1]) > step:
            groups.append(group)
            group, count = [], 0
        group.append(row)
        count += len(row[1])
    return groups + ([group] if group else [])


def pointwise_log_probs(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                        max_rows: int | None = DEFAULT_MAX_ROWS, sharing: str = "auto",
                        gradient_checkpointing: bool = False) -> tuple[torch.Tensor, int]:
    """log P(" yes") and log P(" no") at the end of every candidate's suffix.

    Differentiable: stage 2 trains on it (through the engine's forward, see
    :meth:`LaViC.forward`) and scoring calls it under ``no_grad``, so training and
    serving compute exactly the same thing.

    Args:
        requests: ``(conversation, [(item_id, title), ...])`` each (its raw context text, or its turns).
        max_rows: Candidates per pass (None: all at once); ``packed`` keeps a request's
            candidates in one pass, so a pass may hold more when one request has more.
        sharing: How the conversation prefix is shared by its candidates: ``packed``,
            ``cache``, ``none`` or ``auto`` (module docs); the same numbers every way.
        gradient_checkpointing: The model runs with it (rules out ``cache``).

    Returns:
        ``(total candidates, 2)``, request-major, candidates in list order; and the
        number of input tokens that ran (for throughput figures).
    """
    mode = resolve_sharing(model, sharing, gradient_checkpointing)
    pad = builder.pad_id
    device = next(model.parameters()).device
    parts = [builder.pointwise_parts(conv, cands) for conv, cands in requests]
    prefixes, suffixes = [p.input_ids for p, _ in parts], [s for _, s in parts]
    yes_no = torch.tensor(builder.yes_no_ids(), device=device)
    todo = [(b, i) for b, (_, cands) in enumerate(requests) for i in range(len(cands))]
    step = max_rows or len(todo)
    n_prefix = sum(len(prefixes[b]) for b, _ in todo) if mode == "none" else sum(map(len, prefixes))
    tokens = n_prefix + sum(len(suffixes[b][i]) for b, i in todo)

    def vectors_of(chunk):  # the candidates' vectors for (request, candidate) pairs
        return lookup([requests[b][1][i][0] for b, i in chunk]).to(device) if builder.use_images else None

    out = []
    if mode == "cache":
        _, past, mask, lengths = _prefix(model, prefixes, [], None, pad)
        for start in range(0, len(todo), step):
            chunk = todo[start: start + step]
            logits, _ = _continue(model, past, mask, lengths, [b for b, _ in chunk], [suffixes[b][i] for b, i in chunk],
                                  vectors_of(chunk), pad, side="left", logits_to_keep=1)
            out.append(F.log_softmax(logits[:, -1].float(), dim=-1)[:, yes_no])
    else:  # packed: a row per conversation, all its suffixes after it; none: a row per candidate
        for rows in _row_groups([len(suf) for suf in suffixes], mode, step):
            hidden, starts = _packed_hidden(model, [prefixes[b] for b, _ in rows], [[suffixes[b][i] for i in c] for b, c in rows],
                                            vectors_of([(b, i) for b, c in rows for i in c]), pad)
            ends = [st[1 + s] + len(suffixes[b][i]) - 1 for (b, c), st in zip(rows, starts) for s, i in enumerate(c)]
            last = model.base.lm_head(hidden[torch.tensor(ends, dtype=torch.long, device=device)])
            out.append(F.log_softmax(last.float(), dim=-1)[:, yes_no])
    return (torch.cat(out) if out else torch.zeros(0, 2, device=device)), tokens


@torch.no_grad()
def score_pointwise_batch(model: LaViC, builder: PromptBuilder, requests: Sequence[Request], lookup: VectorLookup | None,
                          max_rows: int = DEFAULT_MAX_ROWS, sharing: str = "auto") -> list[list[float]]:
    """log P(yes) - log P(no) per candidate, each conversation prefix computed once."""
    if not requests:
        return []
    lp, _ = pointwise_log_probs(model, builder, requests, lookup, max_rows, sharing)
    margins = (lp[:, 0] - lp[:, 1]).tolist()
    out, n = [], 0
    for _, cands in requests:
        out.append(margins[n: n + len(cands)])
        n += len(cands)
    return out


def score_listwise(model: LaViC, builder: PromptBuilder, conv: ConvInput, candidates: list[tuple[str, str]],
                   lookup: VectorLookup | None) -> list[float]:
    """One request of :func:`score_listwise_batch`."""
    return score_listwise_batch(model, builder, [(conv, candidates)], lookup)[0]


def score_pointwise(model: LaViC, builder: PromptBuilder, conv: ConvInput, candidates: list[tuple[str, str]],
                    lookup: VectorLookup | None) -> list[float]:
    """One request of :func:`score_pointwise_batch`."""
    return score_pointwise_batch(model, builder, [(conv, candidates)], lookup)[0]


_ID_RE = re.compile(r"\b[0-9A-Z]{10}\b")
#: The reference scripts' parser: the first ASIN-shaped token (an ISBN-style ID never matches).
PAPER_ID_RE = re.compile(r"\bB[A-Z0-9]{9}\b")


def parse_answer(text: str, candidates: Sequence[str], catalog_ids: set[str] | None = None, letters: bool = False,
                 pattern: str = "catalog") -> list[str]:
    """Item IDs named in generated text, in order.

    ``pattern="paper"`` is the reference's rule: the first match of ``\bB[A-Z0-9]{9}\b``,
    whether a candidate or not (ISBN-style IDs can never match). ``catalog`` (lavic-ray's)
    accepts any 10-character ID the catalog (or the candidate list) knows, ISBNs included.
    With ``letters``, a leading letter A.. maps to the candidate at that position.
    """
    if pattern == "paper" and not letters:
        m = PAPER_ID_RE.search(text)
        return [m.group(0)] if m else []
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
    batch = collate(encoded, builder.pad_id, "left").to(device)
    vectors = lookup(batch.images).to(device) if batch.images else None
    embeds = model.embed(batch.input_ids, vectors)
    out = model.vlm.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.batch_decode(out, skip_special_tokens=True)
