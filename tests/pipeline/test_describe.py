"""`lavic describe`: batched full-token generation, skipping, resume, and the output stage 1 reads."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

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
