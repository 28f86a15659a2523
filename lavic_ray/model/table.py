"""The item embedding table: each item's 5 vectors, computed once, stored in Parquet.

Schema: ``item_id`` (string), ``vectors`` (list<float32>, 5 x dim, row-major),
``dim`` (int32), ``n_views`` (int8: real LLaVA-Next views, 0 for a missing image),
``has_image`` (bool). Stage 2, evaluation and serving read it; none of them runs
the vision tower.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lavic_ray import storage
from lavic_ray.errors import InputMissing, InvalidInput
from lavic_ray.model.lavic import NUM_VECTORS

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("vectors", pa.list_(pa.float32())),
    ("dim", pa.int32()),
    ("n_views", pa.int8()),
    ("has_image", pa.bool_()),
])


def table_rows(item_ids: Sequence[str], vectors: torch.Tensor, n_views: Sequence[int], has_image: Sequence[bool]) -> pa.Table:
    """A Parquet-ready table for a batch of items (``vectors``: ``(N, 5, dim)``)."""
    v = vectors.detach().float().cpu().numpy()
    return pa.table({
        "item_id": list(item_ids),
        "vectors": [row.reshape(-1) for row in v],
        "dim": np.full(len(item_ids), v.shape[-1], dtype=np.int32),
        "n_views": np.asarray(n_views, dtype=np.int8),
        "has_image": np.asarray(has_image, dtype=bool),
    }, schema=SCHEMA)


class VectorTable:
    """Item ID -> ``(5, dim)`` vectors, loaded from a Parquet file or directory of shards."""

    def __init__(self, ids: list[str], vectors: torch.Tensor):
        self.ids = ids
        self.vectors = vectors
        self.index = {i: n for n, i in enumerate(ids)}
        self.missing_lookups = 0

    @classmethod
    def load(cls, path: str | Path) -> "VectorTable":
        path = storage.fetch(path)  # under an object store: downloaded once to this node's mirror
        if not path.exists():
            raise InputMissing(f"item embedding table not found: {path}")
        t = pq.read_table(path)
        missing = set(SCHEMA.names) - set(t.column_names)
        if missing:
            raise InvalidInput(f"{path}: not an item embedding table (missing columns {sorted(missing)})")
        dims = set(t.column("dim").to_pylist())
        if len(dims) != 1:
            raise InvalidInput(f"{path}: mixed vector sizes {sorted(dims)}")
        dim = dims.pop()
        flat = np.stack([np.asarray(v, dtype=np.float32) for v in t.column("vectors").to_pylist()])
        return cls(t.column("item_id").to_pylist(), torch.from_numpy(flat.reshape(-1, NUM_VECTORS, dim)))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def similarity(self, item_id: str, others: Sequence[str]) -> list[float]:
        """Cosine similarity of each of ``others`` to ``item_id``, on the mean of each item's 5 vectors
        (an item missing from the table is the least alike: -1)."""
        if item_id not in self.index:
            return [-1.0] * len(others)
        centre = torch.nn.functional.normalize(self.vectors[self.index[item_id]].float().mean(0), dim=0)
        rows = [self.index.get(o, -1) for o in others]
        known = [r for r in rows if r >= 0]
        sims = torch.nn.functional.normalize(self.vectors[known].float().mean(1), dim=-1) @ centre if known else torch.zeros(0)
        it = iter(sims.tolist())
        return [next(it) if r >= 0 else -1.0 for r in rows]

    def lookup(self, ids: Sequence[str]) -> torch.Tensor:
        """``(len(ids), 5, dim)``; an item missing from the table gets zero vectors (counted, logged once)."""
        rows = [self.index.get(i, -1) for i in ids]
        out = torch.zeros(len(ids), NUM_VECTORS, self.dim, dtype=self.vectors.dtype)
        known = [n for n, r in enumerate(rows) if r >= 0]
        if known:
            out[known] = self.vectors[[rows[n] for n in known]]
        n_missing = len(ids) - len(known)
        if n_missing:
            if not self.missing_lookups:
                log.warning("items missing from the embedding table get zero vectors (e.g. %s)", ids[rows.index(-1)])
            self.missing_lookups += n_missing
        return out
