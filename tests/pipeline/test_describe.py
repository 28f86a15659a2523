"""`lavic describe`: batched full-token generation, skipping, resume, and the output stage 1 reads."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from lavic_ray.config import load_config


def _cfg(tiny_dir, *extra):
    return load_config(None, [f"model.checkpoint={tiny_dir}", "describe.max_new_tokens=6", "describe.batch_size=3", *extra])


def test_describe_writes_descriptions_skips_done_ones_and_stage1_reads_them(tmp_path, tiny_dir, synth_root):
    from lavic_ray.data.layout import Catalog
    from lavic_ray.data.descriptions import apply_descriptions
    from lavic_ray.pipeline.describe import run_describe
    from lavic_ray.train.stage1 import stage1_examples

    out = tmp_path / "desc"
    # the synthetic catalog has descriptions already: without overwrite there is nothing to do
    none = run_describe(_cfg(tiny_dir, "describe.limit=5"), synth_root, out, use_ray=False)
    assert none["described_this_run"] == 0 and none["skipped"] > 0
    first = run_describe(_cfg(tiny_dir, "describe.overwrite=true", "describe.limit=5"), synth_root, out, use_ray=False)
    assert first["described_this_run"] == 5 and first["descriptions"] == 5 and first["generated_tokens"] > 0
    table = pq.read_table(out / "descriptions.parquet").to_pylist()
    assert len(table) == 5 and all(isinstance(r["description"], str) for r in table)
    # a rerun continues: the 5 done are skipped, 4 more are described
    again = run_describe(_cfg(tiny_dir, "describe.overwrite=true", "describe.limit=4"), synth_root, out, use_ray=False)
    assert again["described_this_run"] == 4 and again["descriptions"] == 9
    keys = {(r["item_id"], r["image_name"]) for r in pq.read_table(out / "descriptions.parquet").to_pylist()}
    assert len(keys) == 9
    # stage 1 reads them in place of the metadata's
    cat = apply_descriptions(Catalog.load(synth_root), out / "descriptions.parquet")
    ex = {(e.item_id, e.image.name): e.description for e in stage1_examples(cat)}
    got = {(r["item_id"], r["image_name"]): r["description"] for r in pq.read_table(out / "descriptions.parquet").to_pylist()}
    assert all(ex[k] == v for k, v in got.items() if v)
    assert json.loads((out / "summary.json").read_text())["descriptions"] == 9


def test_batched_generation_matches_one_at_a_time(tiny_dir, synth_root):
    """Left padding must not change a prompt's greedy output."""
    from lavic_ray.data.layout import Catalog
    from lavic_ray.pipeline.describe import Describer

    items = [it for it in Catalog.load(synth_root) if it.images][:3]
    d = Describer(str(tiny_dir), prefix="Title: {title}. Image:", suffix=" Description:", max_new_tokens=5)
    titles = [it.title for it in items]
    paths = [str(it.images[0].path) for it in items]
    batched, _ = d.describe(titles, paths)
    single = [d.describe([t], [p])[0][0] for t, p in zip(titles, paths)]
    assert batched == single


def test_describe_items_says_what_the_teacher_sees_of_each_item_in_order(tmp_path, tiny_dir, synth_root):
    """The quickstart's teacher probe: one greedy description per item's primary image, as Describer gives it."""
    from lavic_ray.data.layout import Catalog
    from lavic_ray.errors import InvalidInput
    from lavic_ray.pipeline.describe import Describer, describe_items

    cfg = _cfg(tiny_dir, f"dataset.root={synth_root}")
    items = [it for it in Catalog.load(synth_root) if it.primary_image and it.primary_image.path][:4]
    texts = describe_items(cfg, [it.item_id for it in reversed(items)])
    d = Describer(str(tiny_dir), prefix=cfg.describe.prefix, suffix=cfg.describe.suffix, max_new_tokens=6)
    assert texts == d.describe([it.title for it in reversed(items)], [str(it.primary_image.path) for it in reversed(items)])[0]
    root = tmp_path / "catalog"
    shutil.copytree(synth_root, root)
    (root / "images" / items[0].primary_image.path.name).unlink()
    with pytest.raises(InvalidInput, match="1 items have no readable image to describe"):
        describe_items(_cfg(tiny_dir, f"dataset.root={root}"), [it.item_id for it in items])
