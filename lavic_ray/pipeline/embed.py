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

    @torch.no_grad()
    def embed_views(self, item_ids: list[str], views: list, shapes: list, n_views: list[int]) -> pa.Table:
        """The same from views tiled by ``lavic preprocess`` (no image decoded here); ``None`` views: no image."""
        import numpy as np

        from lavic_ray.model.lavic import NUM_VECTORS
        from lavic_ray.model.table import table_rows

        good = [v is not None for v in views]
        shape = next((list(sh) for sh, g in zip(shapes, good) if g), None)
        side = shape[-1] if shape else int(self.image_processor.crop_size["height"])
        px = torch.zeros(len(item_ids), NUM_VECTORS, 3, side, side, dtype=torch.float32)
        for i, (v, sh, g) in enumerate(zip(views, shapes, good)):
            if g:
                arr = torch.from_numpy(np.frombuffer(v, dtype=np.float16).reshape(list(sh)).astype(np.float32))
                px[i, : arr.shape[0]] = arr[:NUM_VECTORS]
        present = torch.tensor(good)
        n = torch.tensor([int(k) if g else 1 for k, g in zip(n_views, good)])
        vectors = self.model.image_vectors(px.to(self.device), None, present.to(self.device), n.to(self.device))
        return table_rows(item_ids, vectors, [int(k) if g else 0 for k, g in zip(n_views, good)], good)

    def __call__(self, batch: dict) -> pa.Table:
        if "views" in batch:
            return self.embed_views(list(batch["item_id"]), list(batch["views"]), list(batch["views_shape"]),
                                    [int(x) for x in batch["n_views"]])
        return self.embed(list(batch["item_id"]), [str(x) for x in batch["image"]])


def view_rows(catalog: Catalog, views_dir: str | Path) -> list[dict]:
    """One row per item from ``lavic preprocess`` shards: its primary image's views (None: no usable image)."""
    primary = {it.item_id: it.primary_image.name if it.primary_image else None for it in catalog}
    from lavic_ray.pipeline.preprocess import shard_rows

    found = {r["item_id"]: r for r in shard_rows(views_dir, ["item_id", "image_name", "ok", "n_views", "views", "views_shape"])
             if primary.get(r["item_id"]) == r["image_name"]}
    missing_views = [i for i, name in primary.items() if name is not None and i not in found]
    if missing_views:
        raise ValueError(f"{len(missing_views)} items have no row in {views_dir} (e.g. {missing_views[:3]}): "
                         "run lavic preprocess on this catalog first")
    rows = []
    for item_id in primary:
        r = found.get(item_id)
        ok = bool(r and r["ok"] and r["views"] is not None)
        rows.append({"item_id": item_id, "views": r["views"] if ok else None, "views_shape": r["views_shape"] if ok else None,
                     "n_views": r["n_views"] if ok else 0})
    return rows


def run_embed(cfg: LavicConfig, catalog_root: str | Path, out: str | Path, adapter: str | Path | None = None,
              use_ray: bool = True, batch_size: int = 16, actors: int = 1, cpus_per_actor: float = 1.0,
              views: str | Path | None = None) -> Path:
    """Write the item embedding table to ``out`` (a Parquet file).

    Args:
        cfg: The configuration (model section).
        catalog_root: Dataset root (item metadata + images).
        out: The ``.parquet`` file to write (its directory gets ``config.yaml``).
        adapter: Stage-1 adapter; None embeds with the undistilled vision side.
        use_ray: Ray Data actor pool (True) or this process (False).
        views: A ``lavic preprocess`` output directory (default ``dataset.views``): embed from its
            tiled views instead of decoding the images again.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load(catalog_root, cfg.dataset.images_dir)
    views = views or cfg.dataset.views
    rows = view_rows(catalog, views) if views else item_rows(catalog)
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
            parts.append(embedder({k: [r[k] for r in chunk] for k in chunk[0]}))
            log.info("embedded %d/%d items", min(i + batch_size, len(rows)), len(rows))
        table = pa.concat_tables(parts)
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    write_config(out.parent, cfg)
    log.info("item embedding table: %d items -> %s in %.1f s", table.num_rows, out, time.monotonic() - t0)
    return out
