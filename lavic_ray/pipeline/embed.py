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

from lavic_ray import console
from lavic_ray import storage
from lavic_ray.artifacts import write_config
from lavic_ray.config import LavicConfig, actor_pool
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InputMissing

log = logging.getLogger(__name__)


def item_image_name(item, image: str = "primary") -> str | None:
    """The image an item's vectors come from (``embed.image``): its primary image's name, or ``{item_id}_0.jpg``."""
    if image == "first_file":
        return f"{item.item_id}_0.jpg"
    return item.primary_image.name if item.primary_image is not None else None


def item_rows(catalog: Catalog, image: str = "primary", image_dirs: list[Path] | None = None) -> list[dict]:
    """One row per item: the path of its image (``embed.image``; empty: none)."""
    from lavic_ray.data.layout import image_path

    rows = []
    for it in catalog:
        if image == "first_file":
            path = str(image_path(item_image_name(it, image), image_dirs)) if image_dirs else ""
        else:
            im = it.primary_image
            path = str(im.path) if im is not None and im.path is not None else ""
        rows.append({"item_id": it.item_id, "image": path})
    return rows


class EmbedItems:
    """Callable class for ``map_batches``: loads the model once per actor.

    Args:
        model: The ``model`` section (a :class:`lavic_ray.config.ModelConfig` or its dict).
        adapter: Stage-1 vision adapter directory, or None for the undistilled vision side.
        pool: The ``embed`` section (device policy; its dict in a Ray actor).
        threads: torch threads of this actor (its CPUs).
    """

    def __init__(self, model, adapter: str | None = None, pool=None, threads: int | None = None):
        from lavic_ray.config import EmbedConfig, ModelConfig
        from lavic_ray.model.build import build_lavic

        if threads:
            torch.set_num_threads(threads)
        model_cfg = model if isinstance(model, ModelConfig) else ModelConfig(**model)
        pool = pool if isinstance(pool, EmbedConfig) else EmbedConfig(**(pool or {}))
        self.device = pool.resolved_device()
        self.model, ck = build_lavic(model_cfg, adapter=adapter, device=self.device)
        self.image_processor = ck.image_processor
        self.missing = model_cfg.missing_image

    @torch.no_grad()
    def embed(self, item_ids: list[str], images: list[str]) -> pa.Table:
        from lavic_ray.model.table import table_rows
        from lavic_ray.model.views import pixel_views

        # images of a catalog made under an object-store root: downloaded to this node's mirror (a no-op otherwise)
        images = [str(storage.fetch(p)) if p else None for p in images]
        px, sizes, present = pixel_views(self.image_processor, images, self.missing)
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
        if self.missing == "white_image" and not all(good):  # the reference's fallback: a white image, tiled like any
            from lavic_ray.model.views import num_real_views, pixel_views

            wpx, wsize, _ = pixel_views(self.image_processor, [None], "white_image")
            wn = int(num_real_views(self.model.base.config, wsize)[0])
            for i, g in enumerate(good):
                if not g:
                    px[i] = 0
                    px[i, : min(wn, NUM_VECTORS)] = wpx[0, : min(wn, NUM_VECTORS)]
                    n[i] = wn
            present = torch.ones_like(present)
        vectors = self.model.image_vectors(px.to(self.device), None, present.to(self.device), n.to(self.device))
        return table_rows(item_ids, vectors, [int(k) if g else 0 for k, g in zip(n_views, good)], good)

    def __call__(self, batch: dict) -> pa.Table:
        if "views" in batch:
            return self.embed_views(list(batch["item_id"]), list(batch["views"]), list(batch["views_shape"]),
                                    [int(x) for x in batch["n_views"]])
        return self.embed(list(batch["item_id"]), [str(x) for x in batch["image"]])


def view_rows(catalog: Catalog, views_dir: str | Path, image: str = "primary") -> list[dict]:
    """One row per item from ``lavic preprocess`` shards: its image's views (``embed.image``; None: no usable image)."""
    primary = {it.item_id: item_image_name(it, image) for it in catalog}
    from lavic_ray.pipeline.preprocess import shard_rows

    found = {r["item_id"]: r for r in shard_rows(views_dir, ["item_id", "image_name", "ok", "n_views", "views", "views_shape"])
             if primary.get(r["item_id"]) == r["image_name"]}
    missing_views = [i for i, name in primary.items() if name is not None and i not in found]
    if missing_views and image == "primary":  # first_file names files the metadata may not list: those fall back
        raise InputMissing(f"{len(missing_views)} items have no row in {views_dir} (e.g. {missing_views[:3]}): "
                         "run lavic preprocess on this catalog first")
    rows = []
    for item_id in primary:
        r = found.get(item_id)
        ok = bool(r and r["ok"] and r["views"] is not None)
        rows.append({"item_id": item_id, "views": r["views"] if ok else None, "views_shape": r["views_shape"] if ok else None,
                     "n_views": r["n_views"] if ok else 0})
    return rows


def run_embed(cfg: LavicConfig, out: str | Path, adapter: str | Path | None = None, use_ray: bool = True) -> Path:
    """Write the item embedding table of ``cfg.dataset`` to ``out`` (a Parquet file).

    Args:
        cfg: The configuration: ``dataset`` (root; ``views`` to embed from ``lavic preprocess``'s
            tiled views instead of decoding the images again), ``model``, and ``embed`` (batch
            size, actors, CPUs/GPUs per actor, device).
        out: The ``.parquet`` file to write (its directory gets ``config.yaml``).
        adapter: Stage-1 adapter; None embeds with the undistilled vision side.
        use_ray: Ray Data actor pool (True) or this process (False).
    """
    from lavic_ray.data.dataset import Dataset
    from lavic_ray.data.layout import image_dirs
    from lavic_ray.model.table import SCHEMA

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    e = cfg.embed
    dataset = Dataset.from_config(cfg.dataset)
    catalog = dataset.catalog()
    rows = (view_rows(catalog, cfg.dataset.views, e.image) if cfg.dataset.views
            else item_rows(catalog, e.image, image_dirs(dataset.root, dataset.images_dir)))
    kwargs = dict(model=cfg.model.model_dump(), adapter=str(adapter) if adapter else None, pool=e.model_dump())
    t0 = time.monotonic()
    if use_ray:
        import ray

        from lavic_ray.runtime import ensure_ray

        ensure_ray()
        ds = ray.data.from_items(rows).map_batches(
            EmbedItems, fn_constructor_kwargs={**kwargs, "threads": max(1, int(e.cpus_per_actor))}, batch_size=e.batch_size,
            batch_format="numpy", compute=actor_pool(e.actors), num_cpus=e.cpus_per_actor,
            num_gpus=e.gpus_per_actor or None,
        )
        parts = []
        with console.get().progress(len(rows), f"embed {out.stem}", "item") as bar:
            for df in ds.iter_batches(batch_format="pandas", batch_size=None):
                parts.append(pa.Table.from_pandas(df, preserve_index=False))
                bar.update(len(df))
        table = pa.concat_tables(parts).select(SCHEMA.names).cast(SCHEMA)
    else:
        embedder = EmbedItems(**kwargs)
        parts = []
        with console.get().progress(len(rows), f"embed {out.stem}", "item") as bar:
            for i in range(0, len(rows), e.batch_size):
                chunk = rows[i: i + e.batch_size]
                parts.append(embedder({k: [r[k] for r in chunk] for k in chunk[0]}))
                bar.update(len(chunk))
                log.info("embedded %d/%d items", min(i + e.batch_size, len(rows)), len(rows))
        table = pa.concat_tables(parts)
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    write_config(out.parent, cfg)
    storage.publish(out)
    log.info("item embedding table: %d items -> %s in %.1f s", table.num_rows, out, time.monotonic() - t0)
    return out
