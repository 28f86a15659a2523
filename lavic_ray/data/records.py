"""Typed records of the LaViC data layout and the problems found while reading it.

The layout is the one of the paper's public release:

* conversations: ``<root>/<domain>/{train,valid,test}.jsonl``, one object a line;
* items: ``<root>/item2meta_train.json`` (an object mapping item ID to metadata)
  and ``<root>/item2meta_valid.jsonl`` (one image record a line);
* images: ``{item_id}_{k}.jpg`` in an images directory.

Parsing lives in :mod:`lavic_ray.data.layout`; this module only holds the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lavic_ray.errors import InvalidInput, UnknownKey

Severity = Literal["error", "warning"]

#: Candidate lists the paper's release ships (SBERT and GPT-4o-large retrieval).
CANDIDATE_KEYS = ("candidates_st", "candidates_gpt_large")
#: Lists every conversation must have; other ``candidates*`` lists are checked when present.
REQUIRED_CANDIDATE_KEYS = ("candidates_st",)

_TURN_RE = re.compile(r"<(submission|comment)>(.*?)</\1>", re.DOTALL)
_IMAGE_NAME_RE = re.compile(r"^(?P<item>.+)_(?P<k>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """One problem found in the data, located by file, line and field.

    Attributes:
        file: Path of the file the problem is in.
        line: 1-based line number, or 0 when the problem concerns the whole file.
        field: Name of the offending field ("" when the whole record is at fault).
        message: What is wrong, phrased so the user can fix it.
        kind: A stable short code (``malformed_json``, ``missing_field`` ...) for counting.
        severity: ``error`` makes the data unusable as it is; ``warning`` is tolerated
            by the pipeline with a defined fallback (a missing image, say).
    """

    file: str
    line: int
    field: str
    message: str
    kind: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        fld = f" [{self.field}]" if self.field else ""
        return f"{where}:{fld} {self.severity}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "kind": self.kind,
            "severity": self.severity,
        }


class DataError(InvalidInput):
    """Raised by strict readers on the first error; carries the :class:`Problem`."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class Turn:
    """One turn of a Reddit-style conversation."""

    role: Literal["submission", "comment"]
    text: str


@dataclass(frozen=True)
class Conversation:
    """One conversation record.

    Attributes:
        conv_id: ``<file stem>:<line>`` - stable within a file, for reports.
        context: The raw context with ``<submission>``/``<comment>`` turns.
        gt_items: Ground-truth item IDs (at least one).
        candidates: Candidate lists by key (``candidates_st``, ``candidates_gpt_large`` ...).
        context_items: Items mentioned earlier in the conversation (may be empty).
        gt: The reply text that named the ground truth, when the release has it.
    """

    conv_id: str
    context: str
    gt_items: tuple[str, ...]
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    context_items: tuple[str, ...] = ()
    gt: str | None = None

    def turns(self) -> list[Turn]:
        return parse_turns(self.context)

    def candidate_list(self, key: str) -> tuple[str, ...]:
        try:
            return self.candidates[key]
        except KeyError:
            raise UnknownKey(
                f"conversation {self.conv_id} has no candidate list {key!r}; "
                f"it has {sorted(self.candidates) or 'none'}"
            ) from None


@dataclass(frozen=True)
class ItemImage:
    """One image of an item: its file name, where it is on disk, and its teacher description."""

    name: str
    path: Path | None
    description: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Item:
    """One catalog item.

    Attributes:
        item_id: The 10-character ID (ASIN or ISBN-10).
        title: Product title.
        images: The item's images, primary first (lowest ``k`` in ``{id}_{k}.jpg``).
        meta: Every other metadata field, untouched.
    """

    item_id: str
    title: str
    images: tuple[ItemImage, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def primary_image(self) -> ItemImage | None:
        return self.images[0] if self.images else None


def parse_turns(context: str) -> list[Turn]:
    """Split a context into its ``<submission>``/``<comment>`` turns.

    Text outside any tag is kept as a submission turn so that nothing is lost when
    a context is plain text.
    """
    turns = [Turn(m.group(1), m.group(2).strip()) for m in _TURN_RE.finditer(context)]
    if not turns and context.strip():
        turns = [Turn("submission", context.strip())]
    return turns


def format_turns(turns: list[Turn]) -> str:
    """The inverse of :func:`parse_turns`: the release's tagged context text."""
    return "".join(f"<{t.role}>{t.text}</{t.role}>\n" for t in turns)


def plain_text(context: str, sep: str = "\n") -> str:
    """The turns' text without tags (what a text retriever reads)."""
    return sep.join(t.text for t in parse_turns(context))


def split_image_name(name: str) -> tuple[str, int] | None:
    """``"B08LYS9WYD_4.jpg" -> ("B08LYS9WYD", 4)``; None when the name is not of that shape."""
    m = _IMAGE_NAME_RE.match(name)
    if not m:
        return None
    return m.group("item"), int(m.group("k"))
