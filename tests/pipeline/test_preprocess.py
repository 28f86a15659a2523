"""`lavic preprocess`: every kind of bad image, resume, plans, and URL fetching against a local server."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavic_ray.config import load_config


def _jpeg(colour=(200, 30, 30), size=(96, 64), mode="RGB", fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else 128).save(buf, fmt)
    return buf.getvalue()


def _catalog(root: Path, images: dict[str, bytes | None], urls: dict[str, str] | None = None) -> Path:
    """A LaViC-layout catalog: one item per image (``B00000000k_0.jpg``), written as the JSONL items file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (name, data) in enumerate(images.items()):
        item = f"B{k:09d}"
        fname = f"{item}_0.jpg"
        if data is not None:
            (root / "images" / fname).write_bytes(data)
        row = {"title": f"item {name}", "image_name": fname}
        if urls and name in urls:
            row["image"] = urls[name]
        lines.append(json.dumps(row))
    (root / "item2meta_valid.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _cfg(tiny_dir, *extra):
    return load_config(None, [f"model.checkpoint={tiny_dir}", "preprocess.fetch.timeout_s=1", "preprocess.fetch.retries=2",
                              "preprocess.fetch.backoff_s=0.05", *extra])


def _by_name(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = []
    for p in sorted((out / "shards").glob("part-*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return {r["item_id"]: r for r in rows}


def test_each_kind_of_bad_image_is_kept_with_its_reason(tmp_path, tiny_dir, monkeypatch):
    from lavic_ray.data import images as images_mod
    from lavic_ray.pipeline.preprocess import run_preprocess, shard_rows

    good = _jpeg()
    buf = io.BytesIO()
    Image.new("RGBA", (80, 80), (0, 0, 255, 0)).save(buf, "PNG")
    rgba = buf.getvalue()
    buf = io.BytesIO()
    Image.new("CMYK", (70, 90), (0, 255, 255, 0)).save(buf, "JPEG")
    cmyk = buf.getvalue()
    big = _jpeg(size=(200, 200))
    names = {"good": good, "gray": _jpeg(mode="L"), "cmyk": cmyk, "rgba": rgba, "empty": b"", "truncated": good[: len(good) // 2],
             "corrupt": b"\x89PNG not really" * 20, "bomb": big, "missing": None}
    root = _catalog(tmp_path / "cat", names)
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 100 * 100)  # the 200x200 image stands in for a decompression bomb
    manifest = run_preprocess(_cfg(tiny_dir, "preprocess.shard_size=4"), root, tmp_path / "out", use_ray=False)
    rows = {r["item_id"]: r for r in _by_name(tmp_path / "out").values()}
    by = {name: rows[f"B{k:09d}"] for k, name in enumerate(names)}
    for name in ("good", "gray", "cmyk", "rgba"):
        assert by[name]["ok"], (name, by[name]["reason"])
        assert by[name]["n_views"] >= 1 and by[name]["views_shape"][1:] == [3, 32, 32]
    assert by["gray"]["mode"] == "L" and by["cmyk"]["mode"] == "CMYK" and by["rgba"]["mode"] == "RGBA"
    assert by["empty"]["reason"] == "empty file"
    assert by["missing"]["reason"] == "no image file and no URL" or by["missing"]["reason"] == "missing"
    assert "unreadable" in by["truncated"]["reason"] and "unreadable" in by["corrupt"]["reason"]
    assert "pixel limit" in by["bomb"]["reason"]
    assert manifest["images"] == 9 and manifest["bad"] == 5 and manifest["ok"] == 4
    bad = [json.loads(line) for line in (tmp_path / "out" / "bad_images.jsonl").read_text().splitlines()]
    assert len(bad) == 5 and all(b["reason"] for b in bad)
    views = [np.frombuffer(r["views"], dtype=np.float16).reshape(r["views_shape"])
             for r in shard_rows(tmp_path / "out", ["ok", "views", "views_shape"]) if r["ok"] and r["views"] is not None]
    assert len(views) == 4 and all(v.dtype.name == "float16" for v in views)


def test_rerun_skips_finished_shards_and_refuses_a_different_plan(tmp_path, tiny_dir):
    from lavic_ray.pipeline.preprocess import run_preprocess

    root = _catalog(tmp_path / "cat", {f"i{k}": _jpeg(colour=(k * 20, 0, 0)) for k in range(7)})
    out = tmp_path / "out"
    cfg = _cfg(tiny_dir, "preprocess.shard_size=3")
    first = run_preprocess(cfg, root, out, use_ray=False)
    assert first["shards"] == 3 and first["processed_this_run"] == 7
    # an interrupted run: the middle shard never finished (and left a partial temporary file)
    (out / "shards" / "part-00001.parquet").unlink()
    (out / "shards" / "part-00001.parquet.tmp").write_bytes(b"partial")
    kept = (out / "shards" / "part-00000.parquet").stat().st_mtime_ns
    again = run_preprocess(cfg, root, out, use_ray=False)
    assert again["processed_this_run"] == 3 and again["shards_this_run"] == 1 and again["ok"] == 7
    assert (out / "shards" / "part-00000.parquet").stat().st_mtime_ns == kept
    nothing = run_preprocess(cfg, root, out, use_ray=False)
    assert nothing["processed_this_run"] == 0 and nothing["images"] == 7
    with pytest.raises(ValueError, match="different plan"):
        run_preprocess(_cfg(tiny_dir, "preprocess.shard_size=2"), root, out, use_ray=False)


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}
    body = _jpeg(colour=(10, 200, 10))

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path.startswith("/slow") and n == 1:
            time.sleep(1.5)  # over the 1 s timeout once, then fast
        if self.path.startswith("/404"):
            self.send_error(404)
            return
        if self.path.startswith("/500") or (self.path.startswith("/flaky") and n == 1):
            self.send_error(500)
            return
        if self.path.startswith("/truncated"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body[: len(self.body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture()
def server():
    _Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_retries_what_can_succeed_and_stops_on_what_cannot(tmp_path, server):
    from lavic_ray.pipeline.fetch import fetch

    kw = dict(timeout=1.0, retries=2, backoff_s=0.05)
    ok = fetch(f"{server}/ok.jpg", tmp_path / "ok.jpg", **kw)
    assert ok.error is None and ok.attempts == 1 and (tmp_path / "ok.jpg").read_bytes() == _Handler.body
    slow = fetch(f"{server}/slow.jpg", tmp_path / "slow.jpg", **kw)
    assert slow.error is None and slow.attempts == 2
    flaky = fetch(f"{server}/flaky.jpg", tmp_path / "flaky.jpg", **kw)
    assert flaky.error is None and flaky.attempts == 2
    nf = fetch(f"{server}/404.jpg", tmp_path / "nf.jpg", **kw)
    assert nf.path is None and "HTTP 404" in nf.error and _Handler.hits["/404.jpg"] == 1  # not retried
    err = fetch(f"{server}/500.jpg", tmp_path / "err.jpg", **kw)
    assert err.path is None and "HTTP 500" in err.error and _Handler.hits["/500.jpg"] == 3
    tr = fetch(f"{server}/truncated.jpg", tmp_path / "tr.jpg", **kw)
    assert tr.path is None and "truncated" in tr.error and _Handler.hits["/truncated.jpg"] == 3
    assert not (tmp_path / "tr.jpg").exists() and not list(tmp_path.glob("*.part"))
    cap = fetch(f"{server}/big.jpg", tmp_path / "big.jpg", timeout=1.0, retries=2, backoff_s=0.05, max_bytes=10)
    assert cap.path is None and "limit" in cap.error


def test_preprocess_fetches_urls_and_reports_failed_fetches(tmp_path, tiny_dir, server):
    from lavic_ray.pipeline.preprocess import run_preprocess

    names = {"ok": None, "flaky": None, "nf": None, "tr": None, "local": _jpeg()}
    urls = {"ok": f"{server}/ok.jpg", "flaky": f"{server}/flaky.jpg", "nf": f"{server}/404.jpg", "tr": f"{server}/truncated.jpg"}
    root = _catalog(tmp_path / "cat", names, urls)
    manifest = run_preprocess(_cfg(tiny_dir), root, tmp_path / "out", use_ray=False)
    rows = _by_name(tmp_path / "out")
    by = {name: rows[f"B{k:09d}"] for k, name in enumerate(names)}
    assert by["ok"]["ok"] and by["ok"]["source"] == "url" and by["flaky"]["ok"] and by["local"]["ok"]
    assert not by["nf"]["ok"] and "HTTP 404" in by["nf"]["reason"]
    assert not by["tr"]["ok"] and "truncated" in by["tr"]["reason"]
    assert manifest["fetched_this_run"] == 2 and manifest["bad"] == 2
    assert (tmp_path / "out" / "images" / "B000000000_0.jpg").is_file()


def test_embed_from_preprocessed_views_matches_embed_from_images(tmp_path, tiny_dir, synth_root):
    """The table made from the stored (float16) views equals the one made from the images, up to that rounding;
    an item whose image is bad gets the no-image vectors."""
    import numpy as np

    from lavic_ray.model.table import VectorTable
    from lavic_ray.pipeline.embed import run_embed
    from lavic_ray.pipeline.preprocess import run_preprocess

    cfg = _cfg(tiny_dir, "preprocess.shard_size=100")
    run_preprocess(cfg, synth_root, tmp_path / "pre", use_ray=False)
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": str(synth_root)})})
    a = VectorTable.load(run_embed(cfg, tmp_path / "a.parquet", use_ray=False))
    with_views = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"views": str(tmp_path / "pre")})})
    b = VectorTable.load(run_embed(with_views, tmp_path / "b.parquet", use_ray=False))
    ids = list(a.ids)[:40]
    va, vb = a.lookup(ids).numpy(), b.lookup(ids).numpy()
    assert np.abs(va - vb).max() < 2e-2 * max(1.0, np.abs(va).max())
