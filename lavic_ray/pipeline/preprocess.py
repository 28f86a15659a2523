"""`lavic preprocess`: every image decoded, validated and tiled into LLaVA-Next views, in Parquet shards.

Ray Data runs the shards (``preprocess.workers`` at a time). Per image:

1. the local file, or - when the metadata gives only a URL (``image`` in the JSONL layout) - a
   download into ``<out>/images/`` (:mod:`lavic_ray.pipeline.fetch`: bounded concurrency,
   timeouts, retries with backoff);
2. validation with every pixel decoded: missing, empty (zero-size), truncated or corrupt,
   decompression-bomb-sized (over :data:`lavic_ray.data.images.MAX_PIXELS`);
3. conversion to RGB (grayscale, CMYK, palette; alpha composited on white);
4. LLaVA-Next tiling with the model's image processor: up to 5 views, kept as float16 with the
   original size and the number of real views.

A bad image is never dropped silently: its row is kept with ``ok = false`` and the reason,
listed again in ``bad_images.jsonl``, and counted in ``manifest.json``. Its item keeps the
defined fallback of :mod:`lavic_ray.model.lavic`: a missing image gives five zero vectors.

Each shard is written once, atomically (``part-NNNNN.parquet``); a rerun skips the shards
already there, so an interrupted run continues where it stopped. ``plan.json`` pins what the
shards were made with (shard size, image list, image processor): a rerun with a different plan
refuses to mix outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lavic_ray import storage
from lavic_ray.artifacts import atomic_write_text, write_config
from lavic_ray.config import LavicConfig, PreprocessConfig, actor_pool
from lavic_ray.data.images import check_image, load_rgb
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InvalidInput

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("item_id", pa.string()), ("image_name", pa.string()), ("source", pa.string()), ("path", pa.string()),
    ("ok", pa.bool_()), ("reason", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("mode", pa.string()),
    ("n_views", pa.int8()), ("views", pa.binary()), ("views_shape", pa.list_(pa.int32())),
])


def image_rows(catalog: Catalog) -> list[dict]:
    """One row per image of every item, in a stable order (item ID, then image name)."""
    rows = []
    for it in sorted(catalog, key=lambda i: i.item_id):
        for im in it.images:
            rows.append({"item_id": it.item_id, "image_name": im.name, "path": str(im.path) if im.path else "",
                         "url": im.url or ""})
    return rows


def _shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _plan(rows: list[dict], cfg: PreprocessConfig, processor_config: dict) -> dict:
    digest = hashlib.sha1(json.dumps([(r["item_id"], r["image_name"]) for r in rows]).encode()).hexdigest()
    return {"images": len(rows), "shard_size": cfg.shard_size, "images_sha1": digest, "store_views": cfg.store_views,
            "image_processor": processor_config}


class ShardWriter:
    """Processes and writes one shard; a callable class so a Ray Data worker builds it once.

    Args:
        out: The output directory.
        image_processor: A LLaVA-Next image processor, or the directory/name to load one from.
        model_config: The checkpoint's config (for the number of real views), or None.
        cfg: The preprocess section.
    """

    def __init__(self, out: str, image_processor, model_config, cfg: dict):
        self.out = Path(out)
        self.cfg = PreprocessConfig(**cfg)
        if isinstance(image_processor, str):
            from transformers import AutoImageProcessor

            image_processor = AutoImageProcessor.from_pretrained(image_processor)
        if isinstance(model_config, str):
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(model_config)
        self.processor = image_processor
        self.model_config = model_config

    def _views(self, image) -> tuple[np.ndarray, int]:
        import torch

        from lavic_ray.model.views import num_real_views

        out = self.processor([image], return_tensors="pt")
        px = out["pixel_values"][0]
        n = int(num_real_views(self.model_config, out["image_sizes"], 5)[0]) if self.model_config is not None else px.shape[0]
        return px[:n].to(torch.float16).numpy(), n

    def process(self, shard: int, rows: list[dict]) -> dict:
        from lavic_ray.pipeline.fetch import fetch_all

        t0 = time.monotonic()
        f = self.cfg.fetch
        need = [i for i, r in enumerate(rows) if r["url"] and not (r["path"] and Path(r["path"]).is_file())]
        fetched = fetch_all([(rows[i]["url"], self.out / "images" / rows[i]["image_name"]) for i in need], f.concurrency,
                            timeout=f.timeout_s, retries=f.retries, backoff_s=f.backoff_s, max_bytes=f.max_bytes)
        fetch_error = {}
        for i, res in zip(need, fetched):
            if res.path is not None:
                rows[i] = {**rows[i], "path": str(res.path), "source": "url"}
            else:
                fetch_error[i] = res.error
        records = []
        for i, r in enumerate(rows):
            rec = {"item_id": r["item_id"], "image_name": r["image_name"], "source": r.get("source", "file"),
                   "path": r["path"], "ok": False, "reason": None, "width": None, "height": None, "mode": None,
                   "n_views": 0, "views": None, "views_shape": None}
            if i in fetch_error:
                rec.update(source="url", reason=fetch_error[i])
            elif not r["path"]:
                rec["reason"] = "no image file and no URL"
            else:  # the header's checks (missing, empty, unidentified, bomb-sized); the full decode is load_rgb's
                rec["reason"] = check_image(r["path"])
            if rec["reason"] is None:
                try:
                    from PIL import Image

                    with Image.open(r["path"]) as im:
                        rec.update(width=im.size[0], height=im.size[1], mode=im.mode)
                    image = load_rgb(r["path"])  # truncated or corrupt pixel data fails here
                    views, n = self._views(image)
                    rec.update(ok=True, n_views=n)
                    if self.cfg.store_views:
                        rec.update(views=views.tobytes(), views_shape=list(views.shape))
                except Exception as e:  # a decoder or processor failure is this image's problem, not the run's
                    rec.update(ok=False, reason=f"unreadable: {type(e).__name__}: {e}")
            records.append(rec)
        table = pa.Table.from_pylist(records, schema=SCHEMA)
        shards = self.out / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        tmp = shards / (_shard_name(shard) + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(shards / _shard_name(shard))
        storage.publish(shards / _shard_name(shard))  # under an object store, from the node that wrote it
        bad = sum(not r["ok"] for r in records)
        secs = time.monotonic() - t0
        log.info("preprocess shard %d: %d images, %d bad, %.1f s", shard, len(records), bad, secs)
        return {"shard": shard, "images": len(records), "bad": bad, "fetched": len(need) - len(fetch_error), "seconds": secs}

    def __call__(self, row: dict) -> dict:
        return self.process(int(row["shard"]), json.loads(row["rows"]))


def processor_and_config(checkpoint: str):
    """The checkpoint's LLaVA-Next image processor and model config (loads no weights)."""
    from transformers import AutoConfig, AutoImageProcessor

    return AutoImageProcessor.from_pretrained(checkpoint), AutoConfig.from_pretrained(checkpoint)


def run_preprocess(cfg: LavicConfig, catalog_root: str | Path, out: str | Path, checkpoint: str | None = None,
                   use_ray: bool = True) -> dict:
    """Preprocess every image of the catalog into ``out``; returns the manifest.

    Args:
        cfg: The configuration (``preprocess`` section; ``model.checkpoint`` for the image processor).
        catalog_root: Dataset root (item metadata; images under ``images/`` or by URL).
        out: Output directory (``shards/``, ``images/`` for fetched files, reports).
        checkpoint: The checkpoint whose image processor tiles (default ``cfg.model.checkpoint``).
        use_ray: Ray Data (True) or this process (False).
    """
    out = storage.fetch(out)  # under an object store: the shards done so far, to skip them
    out.mkdir(parents=True, exist_ok=True)
    pcfg = cfg.preprocess
    checkpoint = checkpoint or cfg.model.checkpoint
    processor, model_config = processor_and_config(checkpoint)
    rows = image_rows(Catalog.load(catalog_root, cfg.dataset.images_dir))
    if not rows:
        raise InvalidInput(f"no images named in the item metadata under {catalog_root}")
    plan = _plan(rows, pcfg, processor.to_dict())
    plan_file = out / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != json.loads(json.dumps(plan)):
        raise InvalidInput(f"{out} holds shards made with a different plan (image list, shard size or image processor); "
                         "preprocess into a new directory or delete it")
    atomic_write_text(plan_file, json.dumps(plan, indent=1))
    write_config(out, cfg)
    shards = [rows[i: i + pcfg.shard_size] for i in range(0, len(rows), pcfg.shard_size)]
    todo = [k for k in range(len(shards)) if not (out / "shards" / _shard_name(k)).is_file()]
    log.info("preprocess: %d images in %d shards, %d to do (%d done before)", len(rows), len(shards), len(todo),
             len(shards) - len(todo))
    t0 = time.monotonic()
    kwargs = dict(out=str(out), image_processor=processor, model_config=model_config, cfg=pcfg.model_dump())
    if todo and use_ray:
        import ray

        from lavic_ray.runtime import ensure_ray

        ensure_ray()
        items = [{"shard": k, "rows": json.dumps(shards[k])} for k in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
            ShardWriter, fn_constructor_kwargs=kwargs, compute=actor_pool(min(pcfg.workers, len(items))),
            num_cpus=pcfg.cpus_per_worker, resources=cfg.placement.cpu_resources() or None)
        done = ds.take_all()
    else:
        writer = ShardWriter(**kwargs)
        done = [writer.process(k, shards[k]) for k in todo]
    seconds = time.monotonic() - t0
    storage.fetch(out, refresh=True)  # every node's shards
    report = _report(out, plan, done, seconds)
    storage.publish(out)
    return report


def shard_rows(out: str | Path, columns: list[str]):
    """Every row of every finished shard under ``out``, in shard order, with these columns."""
    for p in sorted((storage.fetch(out) / "shards").glob("part-*.parquet")):
        yield from pq.read_table(p, columns=columns).to_pylist()


def _report(out: Path, plan: dict, done: list[dict], seconds: float) -> dict:
    """Read every shard's status columns back: ``bad_images.jsonl`` and ``manifest.json``."""
    recs = list(shard_rows(out, ["item_id", "image_name", "source", "ok", "reason", "n_views"]))
    bad = [{k: r[k] for k in ("item_id", "image_name", "source", "reason")} for r in recs if not r["ok"]]
    atomic_write_text(out / "bad_images.jsonl", "".join(json.dumps(b) + "\n" for b in bad))
    reasons: dict[str, int] = {}
    for b in bad:
        key = b["reason"].split(":")[0] if b["reason"] else "unknown"
        reasons[key] = reasons.get(key, 0) + 1
    processed = sum(d["images"] for d in done)
    manifest = {
        "images": len(recs), "ok": len(recs) - len(bad), "bad": len(bad), "bad_by_reason": reasons,
        "shards": len(list((out / "shards").glob("part-*.parquet"))),
        "processed_this_run": processed, "shards_this_run": len(done),
        "fetched_this_run": sum(d.get("fetched", 0) for d in done), "seconds_this_run": round(seconds, 2),
        "shard_seconds_this_run": round(sum(d["seconds"] for d in done), 2),
        "images_per_s_this_run": round(processed / seconds, 2) if seconds > 0 and processed else None,
        "views_histogram": {str(n): sum(r["n_views"] == n for r in recs) for n in sorted({r["n_views"] for r in recs})},
        "fallback": "an item whose image is bad gets five zero vectors (lavic_ray.model.lavic)",
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    log.info("preprocess: %d images, %d ok, %d bad (%s) -> %s", manifest["images"], manifest["ok"], manifest["bad"],
             reasons or "none", out)
    return manifest
