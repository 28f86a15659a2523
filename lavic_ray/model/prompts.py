"""Prompts for both stages, encoded segment by segment, and batch collation.

A prompt is a list of segments: text (tokenised), image placeholders (5 copies of
the image token, never produced by tokenising text) and the target (tokenised,
followed by EOS, the only positions with labels). Building ids segment by segment
keeps placeholder counts exact and makes truncation precise: an over-long stage-2
prompt loses tokens from the *start of the conversation* only, never a candidate
or the answer cue.

Stage-2 candidate layouts (the causal-attention question):

* ``vectors_first``: ``<5 vectors> ID: title`` - the ID tokens can attend to their
  own item's vectors, so the model can bind an ID to what the image shows.
* ``id_title_vectors``: ``ID: title <5 vectors>`` - the paper's order; an ID
  cannot see its item's vectors, only the next item's ID can.

Formulations:

* ``listwise`` (the paper's): all candidates in one prompt, target = the ground
  truth's label (its item ID, or a letter A..J when ``answer="letter"``).
* ``pointwise``: conversation + one candidate -> " yes" / " no"; candidates are
  ranked by log P(yes) - log P(no). Small models learn it much faster.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

import torch

from lavic_ray.data.records import Turn
from lavic_ray.model.lavic import NUM_VECTORS

Layout = Literal["vectors_first", "id_title_vectors"]
IGNORE = -100
LETTERS = string.ascii_uppercase


@dataclass
class Encoded:
    """One encoded example.

    Attributes:
        input_ids: Token ids, placeholders included.
        labels: Same length; ``-100`` everywhere but the target and its EOS.
        images: The image key of each placeholder group, in order (item IDs here).
        n_conversation_tokens_cut: Tokens dropped from the conversation's start.
    """

    input_ids: list[int]
    labels: list[int]
    images: list[str] = field(default_factory=list)
    n_conversation_tokens_cut: int = 0


class PromptBuilder:
    """Encodes stage-1 and stage-2 prompts with one tokenizer.

    Args:
        tokenizer: A Hugging Face tokenizer (no special tokens are added implicitly).
        image_token_id: The placeholder id.
        max_length: Prompt + target budget in tokens.
        layout: Stage-2 candidate layout.
        answer: ``id`` (item IDs, the paper) or ``letter`` (A, B, ... one token each).
        use_images: False builds the title-only ablation (no placeholders).
    """

    def __init__(self, tokenizer, image_token_id: int, max_length: int = 1024, layout: Layout = "vectors_first",
                 answer: Literal["id", "letter"] = "id", use_images: bool = True):
        self.tok = tokenizer
        self.image_token_id = int(image_token_id)
        self.max_length = max_length
        self.layout = layout
        self.answer = answer
        self.use_images = use_images
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; targets must end with one")

    # ------------------------------------------------------------------ pieces
    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def image_ids(self) -> list[int]:
        return [self.image_token_id] * NUM_VECTORS

    def target_ids(self, text: str) -> list[int]:
        return self.ids(text) + [self.tok.eos_token_id]

    @staticmethod
    def conversation_text(turns: list[Turn]) -> str:
        return "\n".join(f"{'User' if t.role == 'submission' else 'Comment'}: {t.text}" for t in turns)

    def label(self, index: int, item_id: str) -> str:
        if self.answer == "letter":
            if index >= len(LETTERS):
                raise ValueError(f"letter answers support at most {len(LETTERS)} candidates")
            return LETTERS[index]
        return item_id

    # ------------------------------------------------------------------ stage 1
    def stage1(self, title: str, description: str | None, item_id: str) -> Encoded:
        """``Title + 5 vectors -> description``; ``description=None`` builds the generation prompt."""
        prompt = self.ids(f"Product title: {title}\nProduct image:") + self.image_ids() + self.ids(
            "\nDescribe what the image shows.\nDescription:"
        )
        target = self.target_ids(" " + description.strip()) if description is not None else []
        ids = (prompt + target)[: self.max_length]
        labels = ([IGNORE] * len(prompt) + target)[: self.max_length]
        return Encoded(ids, labels, [item_id])

    # ------------------------------------------------------------------ stage 2
    def _candidate_block(self, label: str, title: str) -> list[int]:
        if not self.use_images:
            return self.ids(f"{label}: {title}\n")
        if self.layout == "vectors_first":
            return self.image_ids() + self.ids(f" {label}: {title}\n")
        return self.ids(f"{label}: {title}") + self.image_ids() + self.ids("\n")

    def _fit(self, conv_ids: list[int], fixed: int) -> tuple[list[int], int]:
        budget = self.max_length - fixed
        if budget < 0:
            raise ValueError(f"candidates and answer cue alone need {fixed} tokens > max_length {self.max_length}")
        cut = max(0, len(conv_ids) - budget)
        return conv_ids[cut:], cut

    def listwise(self, turns: list[Turn], candidates: list[tuple[str, str]], answer_index: int | None) -> Encoded:
        """Conversation + all candidates -> the answer's label.

        Args:
            turns: The conversation.
            candidates: ``(item_id, title)`` in list order.
            answer_index: Position of the ground truth in ``candidates`` (None: prompt only).
        """
        head = self.ids("Conversation:\n")
        conv = self.ids(self.conversation_text(turns))
        body = self.ids("\n\nCandidates:\n")
        for i, (item_id, title) in enumerate(candidates):
            body += self._candidate_block(self.label(i, item_id), title)
        cue = self.ids("Which candidate does the user want? Answer:")
        target = [] if answer_index is None else self.target_ids(" " + self.label(answer_index, candidates[answer_index][0]))
        conv, cut = self._fit(conv, len(head) + len(body) + len(cue) + len(target))
        prompt = head + conv + body + cue
        images = [c[0] for c in candidates] if self.use_images else []
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, images, cut)

    def answer_ids(self, candidates: list[tuple[str, str]]) -> list[list[int]]:
        """The token ids of each candidate's answer (what scoring compares)."""
        return [self.ids(" " + self.label(i, c[0])) for i, c in enumerate(candidates)]

    def pointwise_prefix(self, turns: list[Turn], reserve: int) -> tuple[list[int], int]:
        """The shared conversation prefix, cut to leave ``reserve`` tokens for a candidate suffix."""
        head = self.ids("Conversation:\n")
        conv, cut = self._fit(self.ids(self.conversation_text(turns)), len(head) + reserve)
        return head + conv, cut

    def pointwise_suffix(self, item_id: str, title: str) -> list[int]:
        cand = (self.image_ids() + self.ids(f" {title}")) if self.use_images else self.ids(f" {title}")
        return self.ids("\n\nCandidate:") + cand + self.ids("\nIs this what the user wants? Answer:")

    def pointwise(self, turns: list[Turn], item_id: str, title: str, positive: bool | None) -> Encoded:
        """Conversation + one candidate -> " yes" / " no" (None: prompt only)."""
        suffix = self.pointwise_suffix(item_id, title)
        target = [] if positive is None else self.target_ids(" yes" if positive else " no")
        prefix, cut = self.pointwise_prefix(turns, len(suffix) + len(target))
        prompt = prefix + suffix
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, [item_id] if self.use_images else [], cut)

    def yes_no_ids(self) -> tuple[int, int]:
        yes, no = self.ids(" yes"), self.ids(" no")
        if len(yes) != 1 or len(no) != 1:
            raise ValueError("' yes' and ' no' must be single tokens for pointwise scoring")
        return yes[0], no[0]


@dataclass
class Batch:
    """A padded batch; ``images`` lists the image key of each placeholder group in order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    images: list[str]

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.images)


def collate(examples: list[Encoded], pad_id: int, padding_side: Literal["left", "right"] = "right") -> Batch:
    """Pad a list of examples; labels are padded with -100 on the same side, row by row."""
    if not examples:
        raise ValueError("empty batch")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[r, sl] = torch.tensor(e.input_ids)
        labels[r, sl] = torch.tensor(e.labels)
        mask[r, sl] = 1
    return Batch(ids, mask, labels, [k for e in examples for k in e.images])
