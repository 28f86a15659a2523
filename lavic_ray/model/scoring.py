"""Candidate scoring with a shared prefix computed once, and free generation with ID parsing.

Listwise: the prompt (conversation + all candidates + answer cue) runs once; its
KV cache is repeated over the candidates and each candidate's answer tokens are
scored in one batched pass. The score is the answer's summed log-likelihood, so
every candidate gets a score: ValidRatio is 1.0 by construction.

Pointwise: the conversation prefix runs once; each candidate suffix (its 5 vectors,
its title, the question) continues from the repeated cache; the score is
log P(" yes") - log P(" no") at the end of the suffix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lavic_ray.data.records import Turn
from lavic_ray.model.lavic import LaViC
from lavic_ray.model.prompts import IGNORE, LETTERS, Encoded, PromptBuilder, collate

VectorLookup = Callable[[Sequence[str]], torch.Tensor]


def _pad_right(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (continuations carry no labels)."""
    batch = collate([Encoded(s, [IGNORE] * len(s)) for s in seqs], pad, "right")
    return batch.input_ids, batch.attention_mask


def _continue(model: LaViC, past, prefix_len: int, ids: torch.Tensor, mask: torch.Tensor, vectors):
    """Run right-padded continuations ``(n, L)`` from a cache repeated n times."""
    device = ids.device
    n = ids.shape[0]
    embeds = model.embed(ids, vectors)
    attn = torch.cat([torch.ones(n, prefix_len, dtype=mask.dtype, device=device), mask], dim=1)
    pos = (prefix_len + torch.arange(ids.shape[1], device=device))[None].expand(n, -1)
    return model.vlm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, past_key_values=past, use_cache=True).logits


@torch.no_grad()
def score_listwise(model: LaViC, builder: PromptBuilder, turns: list[Turn], candidates: list[tuple[str, str]],
                   lookup: VectorLookup | None) -> list[float]:
    """Summed log-likelihood of each candidate's answer after the shared prompt."""
    device = next(model.parameters()).device
    enc = builder.listwise(turns, candidates, None)
    ids = torch.tensor([enc.input_ids], device=device)
    vectors = lookup(enc.images).to(device) if enc.images else None
    out = model(ids, torch.ones_like(ids), vectors, use_cache=True)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    answers = builder.answer_ids(candidates)
    scores = [float(first[a[0]]) for a in answers]
    if max(len(a) for a in answers) == 1:
        return scores
    past = out.past_key_values
    past.batch_repeat_interleave(len(answers))
    cont_ids, cont_mask = _pad_right([a[:-1] for a in answers], builder.tok.pad_token_id or 0)
    logits = _continue(model, past, ids.shape[1], cont_ids.to(device), cont_mask.to(device), None)
    logp = F.log_softmax(logits.float(), dim=-1)
    for i, a in enumerate(answers):
        for j in range(1, len(a)):
            scores[i] += float(logp[i, j - 1, a[j]])
    return scores


@torch.no_grad()
def score_pointwise(model: LaViC, builder: PromptBuilder, turns: list[Turn], candidates: list[tuple[str, str]],
                    lookup: VectorLookup | None) -> list[float]:
    """log P(yes) - log P(no) per candidate, the conversation prefix computed once."""
    device = next(model.parameters()).device
    suffixes = [builder.pointwise_suffix(i, t) for i, t in candidates]
    prefix, _ = builder.pointwise_prefix(turns, max(len(s) for s in suffixes) + 2)
    ids = torch.tensor([prefix], device=device)
    out = model(ids, torch.ones_like(ids), None, use_cache=True)
    past = out.past_key_values
    past.batch_repeat_interleave(len(candidates))
    cont_ids, cont_mask = _pad_right(suffixes, builder.tok.pad_token_id or 0)
    vectors = lookup([i for i, _ in candidates]).to(device) if builder.use_images else None
    logits = _continue(model, past, ids.shape[1], cont_ids.to(device), cont_mask.to(device), vectors)
    last = cont_mask.sum(1) - 1
    final = F.log_softmax(logits[torch.arange(len(candidates)), last.to(device)].float(), dim=-1)
    yes, no = builder.yes_no_ids()
    return (final[:, yes] - final[:, no]).tolist()


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
