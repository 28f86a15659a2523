"""Do an item table's vectors lie near the words of their attributes? (why stage 2 sits at chance, or not)

For each quickstart work directory given, reads its item embedding table (``items/distilled.parquet``,
the vectors stage 2 sees), its small model's input embeddings and the synthetic catalog's truth
(``synth_truth.json``: labels no model input carries), and prints per decisive attribute:

* ``words``: the share of items whose vectors (each of the 5, and their mean) are nearer, by cosine,
  to the input embedding of their own attribute value (e.g. " teal") than to any other value's
  (chance: 1 / the number of values). How "word-like" the vectors are.
* ``linear``: a logistic regression from the 5 vectors (concatenated) to the attribute, fitted on 60%
  of the items, scored on the rest: whether the information is there at all. The features are not
  standardised (as every figure recorded with it was measured), so this is a lower bound;
  ``bench/linear_probe.py`` standardises, which matters for one rescaled vector (0.444 -> 0.906 there).

Measured (bench/RESULTS.md): stage 2 left chance early where ``words`` was high, late where it was low,
whatever ``linear`` said - which is what ``stage1.word_alignment`` acts on.

    python bench/vector_words.py /tmp/qs_v2s/seed0 /tmp/qs_v2/seed1 [--table items/distilled.parquet]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(workdir: Path, table: str) -> dict:
    from sklearn.linear_model import LogisticRegression

    from lavic_ray.data.dataset import Dataset
    from lavic_ray.model.checkpoints import load_checkpoint
    from lavic_ray.model.table import VectorTable
    from lavic_ray.train.stage1 import mean_input_embedding

    t = VectorTable.load(workdir / table)
    dataset = Dataset(workdir / "catalog", "synthetic")
    truth, vocabulary = dataset.attribute_truth(), dataset.attribute_vocabulary()
    if truth is None or vocabulary is None:
        raise SystemExit(f"{dataset.root}: not a synthetic catalog (no attribute truth or manifest)")
    ck = load_checkpoint(str(workdir / "models" / "small"), "float32", None)
    emb = ck.model.get_input_embeddings().weight.detach()
    items = [i for i in t.ids if i in truth]
    V = t.lookup(items).float()  # (N, 5, hidden)
    Vn = F.normalize(V, dim=-1)
    flat = V.reshape(len(items), -1).numpy()  # the 5 vectors side by side, for the linear probe
    out: dict = {"workdir": str(workdir), "items": len(items)}
    rng = np.random.RandomState(0)
    perm = rng.permutation(len(items))
    train, test = perm[: len(items) * 6 // 10], perm[len(items) * 6 // 10:]
    for a in vocabulary:  # the decisive attributes
        values = sorted({truth[i][a] for i in items})
        W = F.normalize(torch.stack([mean_input_embedding(ck.tokenizer, emb, v) for v in values]), dim=-1)
        y = torch.tensor([values.index(truth[i][a]) for i in items])
        sims = Vn @ W.T  # (N, 5, values)
        per_slot = [round(float((sims[:, k].argmax(-1) == y).float().mean()), 3) for k in range(V.shape[1])]
        mean = round(float((sims.mean(1).argmax(-1) == y).float().mean()), 3)
        clf = LogisticRegression(max_iter=2000).fit(flat[train], y[train].numpy())
        out[a] = {"values": len(values), "chance": round(1 / len(values), 3), "words_per_slot": per_slot,
                  "words_mean": mean, "linear": round(float(clf.score(flat[test], y[test].numpy())), 3)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", type=Path, help="quickstart work directories (synthetic catalog, small model)")
    p.add_argument("--table", default="items/distilled.parquet", help="the table under each work directory")
    a = p.parse_args()
    for w in a.workdirs:
        print(json.dumps(measure(w, a.table)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
