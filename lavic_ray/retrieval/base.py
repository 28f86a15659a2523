"""The retriever interface shared by SBERT and BM25.

A retriever indexes item texts (titles by default, as in the paper) and then
either retrieves the top-k items of the whole catalog for a query, or scores a
given candidate list (reranking). The index is saved to and loaded from a
directory with a ``retriever.json`` describing it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lavic_ray import storage
from lavic_ray.data.records import Conversation, Item, plain_text

INDEX_META = "retriever.json"


def item_text(item: Item, fields: str = "title") -> str:
    """The text a retriever indexes for an item.

    Args:
        item: The catalog item.
        fields: ``title`` (the paper's choice) or ``title+description`` (adds the
            primary image's teacher description, when there is one).
    """
    if fields == "title":
        return item.title
    if fields == "title+description":
        im = item.primary_image
        return f"{item.title}. {im.description}" if im is not None and im.description else item.title
    raise ValueError(f"unknown item text fields {fields!r}; use 'title' or 'title+description'")


def conversation_query(conv: Conversation | str) -> str:
    """The query text for a conversation: its turns without tags."""
    return plain_text(conv.context if isinstance(conv, Conversation) else conv)


class Retriever(ABC):
    """Index item texts; retrieve top-k or score candidate lists."""

    kind: str = ""

    def __init__(self) -> None:
        self.item_ids: list[str] = []
        self._pos: dict[str, int] = {}

    # ---------------------------------------------------------------- index
    def index(self, item_ids: Sequence[str], texts: Sequence[str]) -> "Retriever":
        """Build the index over ``texts`` (aligned with ``item_ids``)."""
        if len(item_ids) != len(texts):
            raise ValueError(f"{len(item_ids)} item IDs but {len(texts)} texts")
        if not item_ids:
            raise ValueError("cannot index an empty catalog")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item IDs must be unique")
        self.item_ids = list(item_ids)
        self._pos = {i: n for n, i in enumerate(self.item_ids)}
        self._build(list(texts))
        return self

    def index_items(self, items: Sequence[Item], fields: str = "title") -> "Retriever":
        return self.index([it.item_id for it in items], [item_text(it, fields) for it in items])

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Index rows of ``ids``; a clear KeyError names IDs the index lacks."""
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise KeyError(f"{len(missing)} candidate ID(s) not in the {self.kind} index: {', '.join(missing[:5])}")
        return np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))

    # ---------------------------------------------------------------- query
    def search(self, queries: Sequence[str], k: int = 10, restrict_to: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
        """Top-k ``(item_id, score)`` per query, best first.

        Args:
            queries: Query texts.
            k: How many items per query.
            restrict_to: Search only among these item IDs (a sub-catalog).
        """
        self._check_indexed()
        rows = self.positions(restrict_to) if restrict_to is not None else None
        scores = self._score_all(list(queries))  # (Q, N)
        if rows is not None:
            scores = scores[:, rows]
        ids = np.asarray(self.item_ids if rows is None else [self.item_ids[r] for r in rows])
        k = min(k, scores.shape[1])
        out = []
        for s in scores:
            # stable ordering for equal scores: by index position
            top = np.argsort(-s, kind="stable")[:k]
            out.append([(str(ids[j]), float(s[j])) for j in top])
        return out

    def score(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score each query's candidates (aligned with the list), for reranking."""
        self._check_indexed()
        if len(queries) != len(candidate_lists):
            raise ValueError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists")
        pos = [self.positions(c) for c in candidate_lists]
        return self._score_pairs(list(queries), pos)

    def _check_indexed(self) -> None:
        if not self.item_ids:
            raise RuntimeError(f"the {self.kind} retriever has no index: call index() or load() first")

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` (created) and return it."""
        self._check_indexed()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._save(d)
        meta = {"kind": self.kind, "item_ids": self.item_ids, **self._meta()}
        (d / INDEX_META).write_text(json.dumps(meta))
        storage.publish(d)
        return d

    @staticmethod
    def load(directory: str | Path) -> "Retriever":
        """Load an index written by :meth:`save`, whatever its kind."""
        d = storage.fetch(directory)  # under an object store: downloaded once to this node's mirror
        meta_file = d / INDEX_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"no retriever index in {d} (missing {INDEX_META})")
        meta = json.loads(meta_file.read_text())
        from lavic_ray.retrieval import RETRIEVERS

        cls = RETRIEVERS.get(meta.get("kind"))
        if cls is None:
            raise ValueError(f"{meta_file}: unknown retriever kind {meta.get('kind')!r}")
        r = cls._from_saved(d, meta)
        r.item_ids = list(meta["item_ids"])
        r._pos = {i: n for n, i in enumerate(r.item_ids)}
        return r

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _build(self, texts: list[str]) -> None: ...

    @abstractmethod
    def _score_all(self, queries: list[str]) -> np.ndarray: ...

    def _score_pairs(self, queries: list[str], positions: list[np.ndarray]) -> list[list[float]]:
        scores = self._score_all(queries)
        return [scores[q, p].astype(float).tolist() for q, p in enumerate(positions)]

    @abstractmethod
    def _save(self, d: Path) -> None: ...

    @abstractmethod
    def _meta(self) -> dict: ...

    @classmethod
    @abstractmethod
    def _from_saved(cls, d: Path, meta: dict) -> "Retriever": ...
