"""Teacher descriptions written by ``lavic describe``: read them, and put them into a catalog.

``descriptions.parquet`` (and, while a run is under way, its ``parts/*.parquet``) holds
``item_id``, ``image_name``, ``description`` and ``tokens``. :mod:`lavic_ray.pipeline.describe`
writes it; stage 1 reads it through :meth:`lavic_ray.data.dataset.Dataset.catalog`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lavic_ray.data.layout import Catalog

DESCRIPTIONS_FILE = "descriptions.parquet"
SCHEMA = pa.schema([("item_id", pa.string()), ("image_name", pa.string()), ("description", pa.string()),
                    ("tokens", pa.int32())])


def read_descriptions(out: str | Path) -> dict[tuple[str, str], str]:
    """``(item_id, image_name) -> description`` from an output directory (``descriptions.parquet`` and any
    unmerged parts) or from one Parquet file."""
    out = Path(out)
    if out.is_file():
        files = [out]
    else:
        files = ([out / DESCRIPTIONS_FILE] if (out / DESCRIPTIONS_FILE).is_file() else []) + sorted((out / "parts").glob("*.parquet"))
    found = {}
    for f in files:
        for r in pq.read_table(f, columns=["item_id", "image_name", "description"]).to_pylist():
            found[(r["item_id"], r["image_name"])] = r["description"]
    return found


def apply_descriptions(catalog: Catalog, path: str | Path) -> Catalog:
    """The catalog with the descriptions of ``descriptions.parquet`` (a file or its directory) in place."""
    found = read_descriptions(path)
    items = []
    for it in catalog:
        imgs = tuple(dataclasses.replace(im, description=found[(it.item_id, im.name)]) if (it.item_id, im.name) in found else im
                     for im in it.images)
        items.append(dataclasses.replace(it, images=imgs))
    return Catalog(items)
