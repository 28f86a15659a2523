"""`lavic embed`: every item's 5 vectors, computed once, into the item embedding table (Parquet).

A Ray Data actor pool holds the model (checkpoint + optional stage-1 vision
adapter); each actor maps batches of ``(item_id, image)`` rows to table rows.
:class:`EmbedItems` is the callable class; :meth:`EmbedItems.embed` is the pure
per-batch function, usable without Ray.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lavic_ray.artifacts import write_config
from lavic_ray.config import LavicConfig
from lavic_ray.data.layout import Catalog

log = logging.getLogger(__name__)


def item_rows(catalog: Catalog) -> list[dict]:
    """One row per item: its primary image (or none)."""
    rows = []
    for it in catalog:
        im = it.primary_image
        rows.append({"item_id": it.item_id, "image": str(im.path) if im is not None and im.path is not None else ""})
    return rows


class EmbedItems:
    """Callable class for ``map_batches``: loads the model once per actor.

    Args:
        checkpoint: LLaVA-Next checkpoint (name or path).
        adapter: Stage-1 vision adapter directory, or None for the undistilled vision side.
        dtype: Model dtype.
        feature_layer, scale_vectors: As in :class:`lavic_ray.model.lavic.LaViC`.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, checkpoint: str, adapter: str | None = None, dtype: str = "float32", feature_layer: int = -2,
                 scale_vectors: bool = True, device: str = "cpu", threads: int | None = None):
        from lavic_ray.model.checkpoints import load_checkpoint
        from lavic_ray.model.lavic import LaViC
        from lavic_ray.model.lora import load_lora

        if threads:
            torch.set_num_threads(threads)
        ck = load_checkpoint(checkpoint, dtype, device if device != "cpu" else None)
        vlm = load_lora(ck.model, adapter) if adapter else ck.model
        self.model = LaViC(vlm, ck.image_token_id, feature_layer, scale_vectors).eval()
        self.image_processor = ck.image_processor
        self.device = device

    @torch.no_grad()
    def embed(self, item_ids: list[str], images: list[str]) -> pa.Table:
        from lavic_ray.model.table import table_rows
        from lavic_ray.model.views import pixel_views

        px, sizes, present = pixel_views(self.image_processor, [p or None for p in images])
        vectors = self.model.image_vectors(px.to(self.device), sizes.to(self.device), present.to(self.device))
        n_views = (self.model.num_real_views(sizes) * present).tolist()
        return table_rows(item_ids, vectors, n_views, present.tolist())

    def __call__(self, batch: dict) -> pa.Table:
        return self.embed(list(batch["item_id"]), [str(x) for x in batch["image"]])


def run_embed(cfg: LavicConfig, catalog_root: str | Path, out: str | Path, adapter: str | Path | None = None,
              use_ray: bool = True, batch_size: int = 16, actors: int = 1, cpus_per_actor: float = 1.0) -> Path:
    """Write the item embedding table to ``out`` (a Parquet file).

    Args:
        cfg: The configuration (model section).
        catalog_root: Dataset root (item metadata + images).
        out: The ``.parquet`` file to write (its directory gets ``config.yaml``).
        adapter: Stage-1 adapter; None embeds with the undistilled vision side.
        use_ray: Ray Data actor pool (True) or this process (False).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = item_rows(Catalog.load(catalog_root))
    kwargs = dict(checkpoint=cfg.model.checkpoint, adapter=str(adapter) if adapter else None, dtype=cfg.model.dtype,
                  feature_layer=cfg.model.feature_layer, scale_vectors=cfg.model.scale_vectors)
    t0 = time.monotonic()
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, include_dashboard=False)
        ds = ray.data.from_items(rows).map_batches(
            EmbedItems, fn_constructor_kwargs={**kwargs, "threads": max(1, int(cpus_per_actor))}, batch_size=batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
        )
        table = pa.concat_tables([pa.Table.from_pandas(df, preserve_index=False) for df in ds.iter_batches(batch_format="pandas", batch_size=None)])
        from lavic_ray.model.table import SCHEMA

        table = table.select(SCHEMA.names).cast(SCHEMA)
    else:
        embedder = EmbedItems(**kwargs)
        parts = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i: i + batch_size]
            parts.append(embedder.embed([r["item_id"] for r in chunk], [r["image"] for r in chunk]))
            log.info("embedded %d/%d items", min(i + batch_size, len(rows)), len(rows))
        table = pa.concat_tables(parts)
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    write_config(out.parent, cfg)
    log.info("item embedding table: %d items -> %s in %.1f s", table.num_rows, out, time.monotonic() - t0)
    return out
