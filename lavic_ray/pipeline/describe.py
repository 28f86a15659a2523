"""`lavic describe`: the teacher description of each image, from the full-token VLM (Ray Data actor pool).

:class:`Describer` is the callable class the pool holds (one model per actor; concurrency,
batch size, CPUs and GPUs per actor from ``describe.*``). Each batch: the images' full LLaVA-Next
tokens (every view, packed) between the prompt's text (``describe.prefix`` with ``{title}``, and
``describe.suffix``; the default is the paper's instruction), left-padded, greedy generation.

Images that already have a description (in the metadata, or from an earlier run) are skipped
unless ``describe.overwrite``; images that are missing or unreadable are listed, not described.
Results are written in parts as batches finish (``parts/``), so an interrupted run keeps what it
did; at the end they are merged into ``descriptions.parquet`` (``item_id``, ``image_name``,
``description``, ``tokens``), which stage 1 reads with ``dataset.descriptions=<that file>``.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lavic_ray import storage
from lavic_ray.artifacts import atomic_write_text, write_config
from lavic_ray.config import DescribeConfig, LavicConfig, actor_pool
from lavic_ray.data.descriptions import DESCRIPTIONS_FILE, SCHEMA, read_descriptions
from lavic_ray.data.images import check_image
from lavic_ray.data.layout import Catalog
from lavic_ray.errors import InvalidInput

log = logging.getLogger(__name__)


class Describer:
    """Callable class for ``map_batches``: loads the VLM once per actor and describes batches of images."""

    def __init__(self, checkpoint: str, dtype: str = "float32", pool: dict | None = None, prefix: str = "", suffix: str = "",
                 max_new_tokens: int = 96, threads: int | None = None):
        from lavic_ray.model.checkpoints import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.device = DescribeConfig(**(pool or {})).resolved_device()  # here, in the actor: its node's devices
        self.ck = load_checkpoint(checkpoint, dtype, self.device if self.device != "cpu" else None)
        self.ck.model.eval()
        self.prefix, self.suffix, self.max_new_tokens = prefix, suffix, max_new_tokens

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.ck.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def describe(self, titles: list[str], paths: list[str]) -> tuple[list[str], list[int]]:
        """Greedy descriptions of the images at ``paths`` (readable images only), and their token counts."""
        from lavic_ray.model.lavic import full_token_features
        from lavic_ray.model.views import pixel_views

        model, tok = self.ck.model, self.ck.tokenizer
        px, sizes, _ = pixel_views(self.ck.image_processor, paths)
        feats = full_token_features(model, px.to(self.device, model.dtype), sizes.to(self.device))
        emb = model.get_input_embeddings()
        rows = [torch.cat([emb(self._ids(self.prefix.replace("{title}", t))), f.to(emb.weight.dtype), emb(self._ids(self.suffix))])
                for t, f in zip(titles, feats)]
        width = max(r.shape[0] for r in rows)
        E = torch.zeros(len(rows), width, rows[0].shape[1], dtype=rows[0].dtype, device=self.device)
        M = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):  # left padding: every prompt ends at the last column
            E[i, width - r.shape[0]:] = r
            M[i, width - r.shape[0]:] = 1
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = model.generate(inputs_embeds=E, attention_mask=M, max_new_tokens=self.max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
        texts, counts = [], []
        for seq in out:
            seq = seq.tolist()
            n = next((i for i, t in enumerate(seq) if t == tok.eos_token_id), len(seq))
            counts.append(n + 1 if n < len(seq) else n)
            texts.append(tok.decode(seq[:n], skip_special_tokens=True).strip())
        return texts, counts

    def __call__(self, batch: dict) -> dict:
        texts, counts = self.describe([str(t) for t in batch["title"]], [str(p) for p in batch["path"]])
        return {"item_id": list(batch["item_id"]), "image_name": list(batch["image_name"]), "description": texts,
                "tokens": counts}


def _unreadable(image) -> str | None:
    """Why a catalog image cannot be described (None: it can)."""
    return "no image file" if image is None or image.path is None else check_image(image.path)


def describe_items(cfg: LavicConfig, item_ids: list[str]) -> list[str]:
    """Greedy full-token descriptions of the primary images of ``item_ids`` (in their order), in this process,
    with ``model.checkpoint`` and the ``describe`` prompt: what the teacher says about each."""
    d: DescribeConfig = cfg.describe
    catalog = Catalog.load(cfg.dataset.root, cfg.dataset.images_dir)
    bad = {i: r for i in item_ids if (r := _unreadable(catalog[i].primary_image))}
    if bad:
        raise InvalidInput(f"{len(bad)} items have no readable image to describe: "
                           + "; ".join(f"{i}: {r}" for i, r in list(bad.items())[:3]))
    describer = Describer(cfg.model.checkpoint, cfg.model.dtype, d.model_dump(), d.prefix, d.suffix, d.max_new_tokens)
    texts: list[str] = []
    for i in range(0, len(item_ids), d.batch_size):
        items = [catalog[x] for x in item_ids[i: i + d.batch_size]]
        texts += describer.describe([it.title for it in items], [str(it.primary_image.path) for it in items])[0]
    return texts


def run_describe(cfg: LavicConfig, catalog_root: str | Path, out: str | Path, use_ray: bool = True) -> dict:
    """Describe the catalog's images into ``out/descriptions.parquet``; returns a summary."""
    out = storage.fetch(out)  # under an object store: the descriptions done so far
    (out / "parts").mkdir(parents=True, exist_ok=True)
    d: DescribeConfig = cfg.describe
    catalog = Catalog.load(catalog_root, cfg.dataset.images_dir)
    done = read_descriptions(out)
    todo, skipped, unreadable = [], 0, []
    for it in catalog:
        for im in it.images:
            key = (it.item_id, im.name)
            if key in done or (im.description and not d.overwrite):
                skipped += 1
                continue
            reason = _unreadable(im)
            if reason:
                unreadable.append({"item_id": it.item_id, "image_name": im.name, "reason": reason})
                continue
            todo.append({"item_id": it.item_id, "image_name": im.name, "title": it.title, "path": str(im.path)})
    if d.limit is not None:
        todo = todo[: d.limit]
    write_config(out, cfg)
    log.info("describe: %d images to describe, %d skipped (already described), %d unreadable", len(todo), skipped, len(unreadable))
    kwargs = dict(checkpoint=cfg.model.checkpoint, dtype=cfg.model.dtype, pool=d.model_dump(), prefix=d.prefix,
                  suffix=d.suffix, max_new_tokens=d.max_new_tokens)
    t0, written, tokens = time.monotonic(), 0, 0
    run = uuid.uuid4().hex[:8]

    def flush(part: pa.Table, k: int):
        tmp = out / "parts" / f"{run}-{k:05d}.parquet.tmp"
        pq.write_table(part.cast(SCHEMA), tmp)
        tmp.replace(tmp.with_suffix(""))

    if todo and use_ray:
        import ray

        from lavic_ray.runtime import ensure_ray

        ensure_ray()
        ds = ray.data.from_items(todo).map_batches(
            Describer, fn_constructor_kwargs={**kwargs, "threads": max(1, int(d.cpus_per_actor))}, batch_size=d.batch_size,
            batch_format="numpy", compute=actor_pool(d.actors), num_cpus=d.cpus_per_actor,
            num_gpus=d.gpus_per_actor or None)
        for k, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None)):
            flush(batch, k)
            written += batch.num_rows
            tokens += sum(batch.column("tokens").to_pylist())
            log.info("describe: %d/%d images (%.2f images/s)", written, len(todo), written / (time.monotonic() - t0))
    elif todo:
        describer = Describer(**kwargs)
        for k, i in enumerate(range(0, len(todo), d.batch_size)):
            chunk = todo[i: i + d.batch_size]
            res = describer({key: [r[key] for r in chunk] for key in ("item_id", "image_name", "title", "path")})
            flush(pa.Table.from_pydict(res), k)
            written += len(chunk)
            tokens += sum(res["tokens"])
            log.info("describe: %d/%d images", written, len(todo))
    seconds = time.monotonic() - t0
    merged = read_descriptions(out)
    table = pa.Table.from_pylist([{"item_id": i, "image_name": n, "description": t, "tokens": None} for (i, n), t in sorted(merged.items())],
                                 schema=SCHEMA)
    tmp = out / (DESCRIPTIONS_FILE + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out / DESCRIPTIONS_FILE)
    for p in (out / "parts").glob("*.parquet"):
        p.unlink()
    summary = {"described_this_run": written, "generated_tokens": tokens, "seconds": round(seconds, 2),
               "images_per_s": round(written / seconds, 3) if written and seconds > 0 else None,
               "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
               "skipped": skipped, "unreadable": unreadable, "descriptions": table.num_rows,
               "file": str(out / DESCRIPTIONS_FILE)}
    import json

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    storage.publish(out)
    return summary
