"""Prompts for both stages, built from the configured templates, and batch collation.

The templates (:class:`lavic_ray.config.PromptsConfig`) are data; this module only fills
them in, counts the image placeholders and truncates the conversation:

* **One string, one tokenisation.** A prompt (and its target) is rendered to one string
  and tokenised once, so its ids are exactly what the tokenizer gives for the whole text
  - no lone ``▁`` at segment joins on SentencePiece tokenizers, BOS as the tokenizer (or
  ``prompts.bos``) says. Character offsets tell which tokens are the conversation (the
  part truncation may cut), the image placeholders and the target (the only labels).
* **Images.** ``{image}`` renders as the checkpoint's image token 5 times (one per vector
  slot; :class:`lavic_ray.model.lavic.LaViC` puts the item's vectors there), or as nothing
  when the run has no images (the title-only ablation).
* **Continuations.** Scoring shares one prompt among candidate continuations (a listwise
  prompt's answers, a pointwise conversation's candidate blocks). The shared part is the
  longest common prefix of the whole-string tokenisations, so every prefix + continuation
  is exactly the tokenisation of its full text.
* **Truncation** (``prompts.truncation``): ``conversation_start`` drops tokens from the
  start of the conversation only, never a candidate, the cue or the target; ``right`` cuts
  the end, as the reference scripts do.

Formulations (:mod:`lavic_ray.model.formulations`): ``listwise`` (the paper's: all
candidates in one prompt, target = the ground truth's label, its ID or a letter) and
``pointwise`` (the conversation, then one candidate -> " yes" / " no").
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from lavic_ray.config import PromptsConfig
from lavic_ray.data.records import Turn, format_turns, parse_turns
from lavic_ray.errors import InvalidInput
from lavic_ray.model.lavic import NUM_VECTORS

IGNORE = -100
LETTERS = string.ascii_uppercase
#: A conversation: its raw context text (``<submission>`` / ``<comment>`` tags), or its turns.
ConvInput = Union[str, Sequence[Turn]]


@dataclass
class Encoded:
    """One encoded example.

    Attributes:
        input_ids: Token ids, placeholders included.
        labels: Same length; ``-100`` everywhere but the target (and its EOS).
        images: The image key of each placeholder group, in order (item IDs here).
        n_conversation_tokens_cut: Tokens dropped by truncation.
    """

    input_ids: list[int]
    labels: list[int]
    images: list[str] = field(default_factory=list)
    n_conversation_tokens_cut: int = 0


@dataclass
class _Text:
    """A rendered prompt: its text, the character span of its conversation, its image keys in order."""

    text: str = ""
    conversation: tuple[int, int] | None = None
    images: list[str] = field(default_factory=list)

    def __add__(self, other: "_Text") -> "_Text":
        conv = self.conversation
        if other.conversation is not None:
            conv = (other.conversation[0] + len(self.text), other.conversation[1] + len(self.text))
        return _Text(self.text + other.text, conv, self.images + other.images)


def _lcp(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    n = min(map(len, seqs))
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


class PromptTemplates:
    """The templates filled in as text - no tokenizer needed (``lavic prompt`` prints this).

    Args:
        prompts: The templates and their rules (``prompts`` section; lavic-ray's defaults when None).
        answer: ``id`` (item IDs, the paper) or ``letter`` (A, B, ... one token each).
        use_images: False renders every ``{image}`` as nothing (the title-only ablation).
        image_text: One vector slot's text (the checkpoint's image token; ``<image>`` for display).
    """

    def __init__(self, prompts: PromptsConfig | None = None, answer: Literal["id", "letter"] = "id", use_images: bool = True,
                 image_text: str = "<image>"):
        self.p = prompts or PromptsConfig()
        self.answer = answer
        self.use_images = use_images
        self.image_text = image_text

    def label(self, index: int, item_id: str) -> str:
        if self.answer == "letter":
            if index >= len(LETTERS):
                raise InvalidInput(f"letter answers support at most {len(LETTERS)} candidates")
            return LETTERS[index]
        return item_id

    def conversation_text(self, conv: ConvInput) -> str:
        """``{conversation}``: the turns rendered with ``prompts.turn``, joined by ``prompts.turn_separator``."""
        turns = parse_turns(conv) if isinstance(conv, str) else conv
        return self.p.turn_separator.join(self.p.turn[t.role].format(text=t.text) for t in turns)

    def render(self, template: str, conv: ConvInput | None = None, image_key: str | None = None, **values) -> _Text:
        """A template filled in: placeholders by value, ``{image}`` as 5 image tokens (or nothing without
        images), ``{context}``/``{conversation}`` as the conversation (its span kept for truncation)."""
        out = _Text()
        for literal, name, _, _ in string.Formatter().parse(template):
            out = out + _Text(literal)
            if name is None:
                continue
            if name == "image":
                if self.use_images:
                    out = out + _Text(self.image_text * NUM_VECTORS, None, [image_key or ""])
            elif name in ("context", "conversation"):
                if conv is None:
                    raise ValueError(f"template {template[:40]!r} needs a conversation")
                text = (conv if isinstance(conv, str) else format_turns(list(conv))) if name == "context" \
                    else self.conversation_text(conv)
                out = out + _Text(text, (0, len(text)))
            else:
                out = out + _Text(str(values[name]))
        return out

    def stage1_prompt(self, title: str, item_id: str) -> _Text:
        return self.render(self.p.stage1, image_key=item_id, title=title, id=item_id)

    def listwise_prompt(self, conv: ConvInput, candidates: Sequence[tuple[str, str]]) -> _Text:
        prompt = self.render(self.p.listwise_header, conv)
        for i, (item_id, title) in enumerate(candidates):
            prompt = prompt + self.render(self.p.listwise_candidate, image_key=item_id, label=self.label(i, item_id),
                                          id=item_id, title=title)
        return prompt + self.render(self.p.listwise_cue)

    def pointwise_prefix(self, conv: ConvInput) -> _Text:
        return self.render(self.p.pointwise_prefix, conv)

    def pointwise_block(self, item_id: str, title: str) -> _Text:
        return self.render(self.p.pointwise_candidate, image_key=item_id, id=item_id, title=title)


class PromptBuilder(PromptTemplates):
    """Encodes stage-1 and stage-2 prompts from the templates, with one tokenizer.

    Args:
        tokenizer: A Hugging Face tokenizer (fast: character offsets are needed).
        image_token_id: The placeholder id.
        max_length: Prompt + target budget in tokens.
        prompts, answer, use_images: As in :class:`PromptTemplates`.
    """

    def __init__(self, tokenizer, image_token_id: int, max_length: int = 1024, prompts: PromptsConfig | None = None,
                 answer: Literal["id", "letter"] = "id", use_images: bool = True):
        super().__init__(prompts, answer, use_images, tokenizer.convert_ids_to_tokens(int(image_token_id)))
        self.tok = tokenizer
        self.image_token_id = int(image_token_id)
        self.max_length = max_length
        if tokenizer.eos_token_id is None and self.p.target_eos:
            raise InvalidInput("the tokenizer has no EOS token; targets must end with one (or set prompts.target_eos=false)")
        if self.p.bos == "always" and tokenizer.bos_token_id is None:
            raise InvalidInput("prompts.bos=always, but the tokenizer has no BOS token")
        probe = self.tok(self.image_text * 2, add_special_tokens=False)["input_ids"]
        if probe != [self.image_token_id] * 2:
            raise InvalidInput(f"the image token {self.image_text!r} does not tokenise to itself ({probe}): "
                               "it must be a special token of the tokenizer")
        self._yes_no: tuple[int, int] | None = None

    @property
    def pad_id(self) -> int:
        """The padding id: the tokenizer's pad token, else its EOS (never a label either way)."""
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    # ------------------------------------------------------------------ tokenising
    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok(text, add_special_tokens=self.p.bos == "tokenizer", return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        bos = self.tok.bos_token_id
        if self.p.bos == "always" and (not ids or ids[0] != bos):
            ids, offsets = [bos, *ids], [(0, 0), *offsets]
        return ids, offsets

    def _conversation_tokens(self, ids: list[int], offsets, span: tuple[int, int] | None, limit: int | None = None) -> list[int]:
        """Indices of the tokens inside the conversation's characters (the only ones truncation may drop)."""
        if span is None:
            return []
        lo, hi = span
        n = len(ids) if limit is None else limit
        return [i for i in range(n) if offsets[i][1] > offsets[i][0] and lo <= offsets[i][0] < hi]

    def _image_keys(self, ids: list[int], keys: list[str]) -> list[str]:
        n = sum(t == self.image_token_id for t in ids)
        if n != NUM_VECTORS * len(keys):
            raise InvalidInput(f"{n} image tokens for {len(keys)} images: a template puts text against {{image}} that the "
                               "tokenizer merges with it")
        return keys

    def _cut(self, ids: list[int], labels: list[int], conv_tokens: list[int], excess: int, keys: list[str]) -> tuple[list[int], list[int], list[str]]:
        """Make room for ``excess`` tokens by the truncation rule."""
        if self.p.truncation == "right":
            ids, labels = ids[: len(ids) - excess], labels[: len(labels) - excess]
            whole = sum(t == self.image_token_id for t in ids) // NUM_VECTORS
            if whole * NUM_VECTORS != sum(t == self.image_token_id for t in ids):  # a cut image group is dropped whole
                last = [i for i, t in enumerate(ids) if t == self.image_token_id][whole * NUM_VECTORS:]
                ids = [t for i, t in enumerate(ids) if i not in set(last)]
                labels = [t for i, t in enumerate(labels) if i not in set(last)]
            return ids, labels, keys[:whole]
        if excess > len(conv_tokens):
            raise InvalidInput(f"candidates and answer cue alone need {len(ids) - len(conv_tokens)} tokens > max_length "
                               f"{self.max_length}; raise max_length")
        drop = set(conv_tokens[:excess])
        return ([t for i, t in enumerate(ids) if i not in drop], [t for i, t in enumerate(labels) if i not in drop], keys)

    def encode(self, prompt: _Text, target: str | None = None) -> Encoded:
        """A prompt and its optional target as one sequence: labels on the target's tokens (and EOS)."""
        text = prompt.text + (target or "")
        ids, offsets = self._tokenize(text)
        start = len(prompt.text)
        labels = [t if target and offsets[i][1] > start else IGNORE for i, t in enumerate(ids)]
        conv = self._conversation_tokens(ids, offsets, prompt.conversation)
        if target is not None and self.p.target_eos:
            ids, labels = ids + [self.tok.eos_token_id], labels + [self.tok.eos_token_id]
        keys = self._image_keys(ids, prompt.images)
        excess = len(ids) - self.max_length
        cut = 0
        if excess > 0:
            ids, labels, keys = self._cut(ids, labels, conv, excess, keys)
            cut = excess
        return Encoded(ids, labels, keys, cut)

    def continuations(self, prompt: _Text, tails: list[_Text], reserve: int = 0) -> tuple[Encoded, list[list[int]]]:
        """A shared prompt and each continuation's tokens, exactly the whole-string tokenisation of
        prompt + continuation: the shared part is the longest common prefix of those tokenisations.

        The prompt's conversation is cut (``conversation_start``) so that the longest continuation and
        ``reserve`` more tokens fit in ``max_length``; with ``right`` truncation the prompt is cut at the end.
        """
        base_ids, base_off = self._tokenize(prompt.text)
        fulls = [self._tokenize(prompt.text + t.text)[0] for t in tails]
        n = _lcp([base_ids, *fulls])
        shared, rest = base_ids[:n], [f[n:] for f in fulls]
        keys = self._image_keys(shared, prompt.images)
        for r, t in zip(rest, tails):
            self._image_keys(r, t.images)
        excess = len(shared) + max(map(len, rest), default=0) + reserve - self.max_length
        cut = 0
        if excess > 0:
            conv = self._conversation_tokens(base_ids, base_off, prompt.conversation, limit=n)
            shared, _, keys = self._cut(shared, [IGNORE] * len(shared), conv, excess, keys)
            cut = excess
        return Encoded(shared, [IGNORE] * len(shared), keys, cut), rest

    # ------------------------------------------------------------------ stage 1
    def stage1(self, title: str, description: str | None, item_id: str) -> Encoded:
        """``title + 5 vectors -> description``; ``description=None`` builds the generation prompt."""
        prompt = self.stage1_prompt(title, item_id)
        target = None if description is None else self.p.stage1_target.format(description=description)
        return self.encode(prompt, target)

    # ------------------------------------------------------------------ stage 2: listwise
    def _answer(self, index: int, item_id: str) -> str:
        return self.p.listwise_answer.format(label=self.label(index, item_id), id=item_id)

    def listwise(self, conv: ConvInput, candidates: Sequence[tuple[str, str]], answer_index: int | None) -> Encoded:
        """Conversation + all candidates -> the answer's label (``answer_index=None``: the prompt only)."""
        prompt = self.listwise_prompt(conv, candidates)
        target = None if answer_index is None else self._answer(answer_index, candidates[answer_index][0])
        return self.encode(prompt, target)

    def listwise_answers(self, conv: ConvInput, candidates: Sequence[tuple[str, str]]) -> tuple[Encoded, list[list[int]]]:
        """The listwise prompt shared by every candidate's answer, and each answer's tokens (what scoring compares)."""
        tails = [_Text(self._answer(i, c[0])) for i, c in enumerate(candidates)]
        return self.continuations(self.listwise_prompt(conv, candidates), tails, reserve=int(self.p.target_eos))

    # ------------------------------------------------------------------ stage 2: pointwise
    def pointwise_parts(self, conv: ConvInput, candidates: Sequence[tuple[str, str]]) -> tuple[Encoded, list[list[int]]]:
        """The conversation prefix shared by the candidates, and each candidate block's tokens (its 5 image
        slots, title and question), room left for the one-token answer."""
        prefix = self.pointwise_prefix(conv)
        blocks = [self.pointwise_block(i, t) for i, t in candidates]
        return self.continuations(prefix, blocks, reserve=1 + int(self.p.target_eos))

    def pointwise(self, conv: ConvInput, item_id: str, title: str, positive: bool | None) -> Encoded:
        """Conversation + one candidate -> yes / no (``positive=None``: the prompt only)."""
        prompt = self.pointwise_prefix(conv) + self.pointwise_block(item_id, title)
        target = None if positive is None else (self.p.pointwise_yes if positive else self.p.pointwise_no)
        return self.encode(prompt, target)

    def yes_no_ids(self) -> tuple[int, int]:
        """The one token of ``pointwise_yes`` and of ``pointwise_no`` where they follow a candidate block."""
        if self._yes_no is None:
            block = self.pointwise_block("x", "x").text
            base = self._tokenize(block)[0]
            out = []
            for word in (self.p.pointwise_yes, self.p.pointwise_no):
                full = self._tokenize(block + word)[0]
                tail = full[_lcp([base, full]):]
                if len(tail) != 1:
                    raise InvalidInput(f"prompts.pointwise_yes/no: {word!r} after the candidate block is {len(tail)} tokens; "
                                       "pointwise scoring needs one token each")
                out.append(tail[0])
            if out[0] == out[1]:
                raise InvalidInput("prompts.pointwise_yes and pointwise_no are the same token")
            self._yes_no = (out[0], out[1])
        return self._yes_no


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
