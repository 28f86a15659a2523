"""Padding in stage-2 micro-batches on the real Reddit-Amazon conversations: random vs length-grouped.

Right padding to the longest prompt of a micro-batch is compute that trains nothing (measured on
the H100 with these conversations: micro-batch 16 ran *slower* than 4). This builds the real
listwise prompts (conversation + 10 ``candidates_st`` candidates, ``ID: title`` + 5 vectors, the
1,024-token budget) of each domain's valid.jsonl with the small model's tokenizer, then cuts
micro-batches the way the training loop does (``lavic_ray.train.loop._shard_batches``) with
``stage2.group_by_length`` off and on, using the loop's own cheap length estimate (characters of
the conversation and the candidate titles, ``lavic_ray.model.formulations.length_estimate``), and reports the share
of padded token slots. No model runs: the figure is exact for the prompts, and the compute saved
on a GPU is roughly proportional to it. The shared data holds no metadata for the candidate items,
so, as in ``bench/gpu_7b.py --conversations``, each candidate ID gets a title of a synthetic catalog
(``lavic synth``, fixed by a hash of the ID): the conversations - what varies - are real.

    python bench/length_grouping.py [--data ../shared/data/reddit_amazon] [--out bench/results/length_grouping.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "reddit_amazon"))
    p.add_argument("--micro-batches", type=int, nargs="*", default=[4, 8, 16])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "length_grouping.json"))
    a = p.parse_args()

    from transformers import AutoTokenizer

    from lavic_ray.config import PromptsConfig, Stage2Config
    from lavic_ray.data.layout import read_conversations
    from lavic_ray.model.checkpoints import IMAGE_TOKEN, SMOLLM2_GGUF, smollm2_dir
    from lavic_ray.model.prompts import PromptBuilder
    from lavic_ray.train.loop import _shard_batches
    from lavic_ray.model.formulations import length_estimate, listwise_samples

    data = Path(a.data)
    import hashlib
    import tempfile

    from lavic_ray.config import SynthConfig
    from lavic_ray.data.layout import Catalog
    from lavic_ray.data.synthetic import generate
    from lavic_ray.retrieval import make_retriever

    synth = Path(tempfile.mkdtemp(prefix="lavic-bench-")) / "catalog"
    generate(SynthConfig(items=100, conversations=40, seed=3), synth, make_retriever("sbert"), force=True)
    pool = sorted(it.title for it in Catalog.load(synth))

    def title(item_id: str) -> str:
        return pool[int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) % len(pool)]

    tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    builder = PromptBuilder(tok, tok.convert_tokens_to_ids(IMAGE_TOKEN), 1024,
                            PromptsConfig(listwise_candidate="{label}: {title}{image}\n"))
    rows = []
    for domain in sorted(d.name for d in data.iterdir() if (d / "valid.jsonl").is_file()):
        t0 = time.monotonic()
        convs = read_conversations(data / domain / "valid.jsonl", ("candidates_st",))
        samples = listwise_samples(convs, "candidates_st", 0)
        lengths = [len(builder.listwise(s.conv.turns(), [(c, title(c)) for c in s.candidates], s.answer).input_ids)
                   for s in samples]
        estimate = [length_estimate(s, title) for s in samples]
        for mb in a.micro_batches:
            row = {"domain": domain, "samples": len(samples), "micro_batch": mb,
                   "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths)}
            for grouped in (False, True):
                cfg = Stage2Config(engine={"micro_batch_size": mb}, group_by_length=grouped)
                batches = _shard_batches(len(samples), cfg, 0, 0, 1, estimate)
                slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
                real = sum(lengths[i] for b in batches for i in b)
                row["padding_grouped" if grouped else "padding_random"] = round(1 - real / slots, 4)
                row["slots_grouped" if grouped else "slots_random"] = slots
            row["slots_ratio"] = round(row["slots_random"] / row["slots_grouped"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"({domain}: {time.monotonic() - t0:.1f} s)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
