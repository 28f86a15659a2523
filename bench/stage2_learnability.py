"""How fast can stage 2 learn the match when the item side carries the attributes? (a ceiling analysis)

The synthetic catalog's truth (``synth_truth.json``) is given to the model here in
ways the real method never sees, to separate "stage 2 cannot learn the match" from
"the item vectors do not carry the attributes":

* ``text``: each title ends with the item's colour and pattern as words; stage 2
  runs title-only (no vectors). The upper bound of what the LLM can learn.
* ``mix``: every item's 5 vectors are the normalised sum of the LLM's own input
  embeddings of its colour word and pattern word: soft vectors that are still
  exactly word-like.
* ``table:PATH``: an item embedding table made by ``lavic embed`` (the real thing).

    python bench/stage2_learnability.py --catalog CAT --checkpoint MODEL --variant text --steps 40

Prints the validation HR@1 every ``--eval-every`` steps and writes the run under
``--out``. Everything else is the quickstart preset (override with ``--set``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The pattern words of the synthetic descriptions, one token each in SmolLM2's vocabulary.
PATTERN_WORD = {"solid": " solid", "striped": " stripes", "polka-dot": " dots", "checkered": " checkered"}


def text_oracle_catalog(src: Path, dst: Path) -> Path:
    """A copy of the catalog whose titles end with " - <colour> <pattern>" (images linked, not copied)."""
    truth = json.loads((src / "synth_truth.json").read_text())["items"]
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("images"))
    (dst / "images").symlink_to((src / "images").resolve())

    def title(item_id: str, t: str) -> str:
        return f"{t} - {truth[item_id]['colour']} {truth[item_id]['pattern']}"

    meta = json.loads((src / "item2meta_train.json").read_text())
    for item_id, m in meta.items():
        m["title"] = title(item_id, m["title"])
    (dst / "item2meta_train.json").write_text(json.dumps(meta, indent=1))
    rows = []
    for line in (src / "item2meta_valid.jsonl").read_text().splitlines():
        r = json.loads(line)
        r["title"] = title(r["image_name"].rsplit("_", 1)[0], r["title"])
        rows.append(json.dumps(r))
    (dst / "item2meta_valid.jsonl").write_text("\n".join(rows) + "\n")
    return dst


def mix_oracle_table(src: Path, checkpoint: str, out: Path) -> Path:
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from lavic_ray.model.checkpoints import load_checkpoint
    from lavic_ray.model.table import table_rows

    ck = load_checkpoint(checkpoint)
    emb = ck.model.get_input_embeddings().weight.detach()

    def word(w: str) -> torch.Tensor:
        return emb[ck.tokenizer(w, add_special_tokens=False)["input_ids"][-1]]

    truth = json.loads((src / "synth_truth.json").read_text())["items"]
    ids = sorted(truth)
    norm = emb.norm(dim=-1).mean()
    vecs = torch.stack([(F.normalize(word(" " + truth[i]["colour"]) + word(PATTERN_WORD[truth[i]["pattern"]]), dim=-1)
                         * norm)[None].expand(5, -1) for i in ids])
    pq.write_table(table_rows(ids, vecs, [5] * len(ids), [True] * len(ids)), out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", required=True, help="a synthetic catalog (lavic synth)")
    p.add_argument("--checkpoint", required=True, help="the small model (or any LLaVA-Next checkpoint directory)")
    p.add_argument("--variant", required=True, help="text | mix | table:PATH")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--out", default="bench/results/learnability")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()

    from lavic_ray.quickstart import quickstart_config
    from lavic_ray.train.run import run_local

    src, out = Path(a.catalog), Path(a.out) / a.variant.split(":")[0]
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"model.checkpoint={a.checkpoint}", f"dataset.root={src}", f"stage2.max_steps={a.steps}", f"stage2.eval_every={a.eval_every}",
                 "stage2.engine.kind=torch"]
    catalog, table = src, None
    if a.variant == "text":
        catalog = text_oracle_catalog(src, out / "catalog")
        overrides += ["stage2.use_images=false", f"dataset.root={catalog}"]
    elif a.variant == "mix":
        table = mix_oracle_table(src, a.checkpoint, out / "mix.parquet")
        overrides.append("model.scale_vectors=false")
    elif a.variant.startswith("table:"):
        table = Path(a.variant.split(":", 1)[1])
    else:
        p.error("--variant must be text, mix or table:PATH")
    cfg = quickstart_config(None, overrides + a.overrides)
    t0 = time.monotonic()
    run_local("stage2", cfg, out / "stage2", table)
    hist = json.loads((out / "stage2" / "history.json").read_text())
    curve = [(h["step"], round(h["valid_hr@1"], 4)) for h in hist if "valid_hr@1" in h]
    result = {"variant": a.variant, "seconds": round(time.monotonic() - t0, 1), "valid_hr@1_by_step": curve,
              "stage2": cfg.stage2.model_dump(mode="json")}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "stage2"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
