"""Can the teacher see the decisive attributes? Full-token descriptions of a synthetic catalog, scored.

LaViC's stage 1 distils what the VLM says from all its image tokens into 5 vectors; an attribute the
full-token model cannot name is one self-distillation has nothing to distil. This greedy-describes the
primary images of a synthetic catalog's first ``--items`` valid/test-pool items with a small model, the
way ``lavic describe`` does (the quickstart preset's describe prompt: the one the small model's vision side
was trained with), and prints per decisive attribute the share of descriptions naming the true value first
(``lavic_ray.eval.probe.first_mentioned``, the stage-1 probe's reading; labels from ``synth_truth.json``,
never a model input). The small model's build trains on every catalog image, so this measures what it
learned to name, not generalisation.

    python bench/teacher_probe.py --model lavic_runs/quickstart/models/small --catalog lavic_runs/quickstart/catalog
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(model: str, catalog_dir: Path, items: int) -> dict:
    from lavic_ray.data.dataset import Dataset
    from lavic_ray.eval.probe import score_descriptions
    from lavic_ray.pipeline.describe import describe_items
    from lavic_ray.quickstart import quickstart_config

    ds = Dataset(catalog_dir, "synthetic")
    truth, vocab = ds.attribute_truth(), ds.attribute_vocabulary()
    if truth is None or vocab is None:
        raise SystemExit(f"{catalog_dir}: not a synthetic catalog (no attribute truth or manifest)")
    held = [i for i in sorted(truth) if truth[i]["pool"] != "train"][:items]
    cfg = quickstart_config(None, [f"model.checkpoint={model}", f"dataset.root={catalog_dir}", "dataset.domain=synthetic"])
    out = score_descriptions(held, describe_items(cfg, held), truth, vocab)
    return {"model": model, "catalog": str(catalog_dir),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a LLaVA-Next checkpoint (the quickstart's: WORKDIR/models/small)")
    p.add_argument("--catalog", required=True, type=Path, help="the synthetic catalog it was built on")
    p.add_argument("--items", type=int, default=48, help="held-out items to describe")
    a = p.parse_args()
    print(json.dumps(measure(a.model, a.catalog, a.items), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
