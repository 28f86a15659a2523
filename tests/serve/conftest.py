"""A served stage-2 run whose answer is planted: its LoRA is trained (with the real
prompts, collation and LaViC forward) to answer one item ID whatever the list, so a
request must get that item back first when it is among the candidates.

The tiny random model's output layer is initialised so small that its logits stay
near uniform; the served checkpoint is a copy with the output rows scaled x20, which
lets 40 LoRA steps plant the answer (loss ~0.1, margin > 50 nats measured)."""

from __future__ import annotations

import random
import pytest
import torch


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, tiny_dir, synth_root) -> dict:
    from lavic_ray.artifacts import write_config
    from lavic_ray.config import load_config
    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.model.checkpoints import load_checkpoint, save_checkpoint
    from lavic_ray.model.lavic import LaViC
    from lavic_ray.model.lora import add_lora
    from lavic_ray.model.prompts import PromptBuilder, collate
    from lavic_ray.model.table import VectorTable
    from lavic_ray.pipeline.embed import run_embed

    out = tmp_path_factory.mktemp("served")
    ck = load_checkpoint(str(tiny_dir))
    ck.model.lm_head.weight.data *= 20
    sharp = save_checkpoint(ck, out / "tiny-sharp")
    cfg = load_config(None, [f"model.checkpoint={sharp}", "stage2.formulation=listwise", "stage2.max_length=512",
                              f"dataset.root={synth_root}", "embed.batch_size=64"])
    table = run_embed(cfg, out / "items.parquet", use_ray=False)
    catalog = Catalog.load(synth_root)
    convs = read_conversations(synth_root / "synthetic" / "train.jsonl")
    planted = sorted(catalog.ids())[5]
    others = [i for i in catalog.ids() if i != planted]

    torch.manual_seed(0)
    rng = random.Random(0)
    ck = load_checkpoint(str(sharp))
    vlm = add_lora(ck.model, "llm", cfg.stage2.lora)
    model = LaViC(vlm, ck.image_token_id)
    vectors = VectorTable.load(table)
    builder = PromptBuilder(ck.tokenizer, ck.image_token_id, cfg.stage2.max_length)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(40):
        batch = []
        for _ in range(4):
            cands = rng.sample(others, 9)
            pos = rng.randrange(10)
            cands.insert(pos, planted)
            batch.append(builder.listwise(rng.choice(convs).turns(), [(c, catalog[c].title) for c in cands], pos))
        b = collate(batch, ck.tokenizer.pad_token_id, "right")
        loss = model(b.input_ids, b.attention_mask, vectors.lookup(b.images), labels=b.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    stage2 = out / "stage2"
    vlm.save_pretrained(str(stage2 / "adapter"))
    write_config(stage2, cfg)
    return {"stage2_dir": str(stage2), "table": str(table), "catalog": str(synth_root), "planted": planted,
            "final_loss": float(loss.detach()), "catalog_obj": catalog}


@pytest.fixture(scope="session")
def serve_args(served_run):
    from lavic_ray.serve.schema import ServeArgs

    return ServeArgs(stage2_dir=served_run["stage2_dir"], table=served_run["table"], catalog=served_run["catalog"],
                     retrieve_k=10, max_candidates=12, max_text_chars=2000, torch_threads=1)
