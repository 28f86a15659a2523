"""Image vectors against the words of their descriptions, in the LLM's own input-embedding space.

Each description becomes one unit target: the mean input embedding of its tokens, minus what every description
shares (the template's words), so what tells descriptions apart - their attribute words - remains. Stage 1's
``word_alignment`` pulls LaViC's 5 vectors towards their own description's target; the small model's build
(:func:`lavic_ray.model.small.align_projector`) starts its fresh projector the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_input_embedding(tokenizer, embedding: torch.Tensor, text: str) -> torch.Tensor:
    """The mean of the input embeddings of ``" " + text``'s tokens (EOS's for a text with none), in fp32."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    return embedding[torch.tensor(ids)].float().mean(0)


def description_targets(descriptions: list[str], tokenizer, embedding: torch.Tensor) -> torch.Tensor:
    """One unit row per description: the mean of its tokens' input embeddings, minus the mean of those
    means over all the descriptions (what every description shares - its template words - cancels, so
    what tells descriptions apart, such as their attribute words, remains)."""
    means = torch.stack([mean_input_embedding(tokenizer, embedding, d) for d in descriptions])
    return F.normalize(means - means.mean(0, keepdim=True), dim=-1)


def word_alignment_loss(vectors: torch.Tensor, present: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                        temperature: float, negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each vector of an image against the descriptions, its own as the target.

    Args:
        vectors: ``(B, K, hidden)``, each image's K vectors as the LLM receives them (LaViC's 5).
        present: ``(B,)``; images without a file carry no term.
        targets: ``(U, hidden)`` from :func:`description_targets`.
        rows: ``(B,)`` each image's row of ``targets``.
        negatives: how many other rows (at most) each step contrasts against, drawn at random.

    Returns:
        The mean cross-entropy over the present images' vectors (0 when none is present).
    """
    keep = present.bool()
    if not bool(keep.any()):
        return vectors.sum() * 0.0
    own = rows[keep].unique()
    others = torch.ones(targets.shape[0], dtype=torch.bool)
    others[own.cpu()] = False
    pool = others.nonzero().flatten()
    if pool.numel() > negatives:
        pool = pool[torch.randperm(pool.numel(), generator=generator)[:negatives]]
    cols = torch.cat([own.cpu(), pool]).to(targets.device)
    where = torch.full((targets.shape[0],), -1, dtype=torch.long, device=targets.device)
    where[cols] = torch.arange(cols.numel(), device=targets.device)
    v = F.normalize(vectors[keep].float(), dim=-1)  # (b, 5, hidden)
    logits = v @ targets[cols].T.to(v.device) / temperature  # (b, 5, columns)
    labels = where[rows[keep].to(targets.device)].to(v.device).repeat_interleave(v.shape[1])
    return F.cross_entropy(logits.reshape(-1, cols.numel()), labels)
