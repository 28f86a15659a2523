"""7B-shaped LaViC on one GPU: stage-2 and stage-1 training steps and the reranker, ours vs the reference approach,
with peak memory under a 40 GiB cap (the single-A100-40GB profile).

A randomly initialised LLaVA-Next with llava-v1.6-mistral-7b's shapes (bench/memory_a100.py) in bf16,
SDPA attention, LoRA as in jobs/configs/7b.yaml, AdamW on the LoRA parameters: the plain loop's torch
path (no Ray, no DeepSpeed: the GPU box has neither). The text vocabulary is SmolLM2's tokenizer (49,153
rows instead of Mistral's 32,064: +0.14 B parameters in the embeddings and output layer, ~1% of the
model's FLOPs), so real prompts can be built from a synthetic catalog with this project's PromptBuilder.
``torch.cuda.set_per_process_memory_fraction`` caps the process at ``--cap-gib`` so an 80 GiB card
behaves like a 40 GiB one: an allocation past the cap fails as it would there.

Parts (each prints one JSON line; all land in ``--out``):

* ``stage2``: ours (listwise ``ID: title`` + 5 vectors from the item table, micro-batch 4, masked_scatter,
  gradient checkpointing on all or all-but-the-last-k layers) vs the reference (batch 1, images loaded
  and tiled in the step, the frozen vision tower re-run on all 10 x 5 views, per-token splice, no
  checkpointing); step time, samples/s, tokens/s, MFU, peak memory;
* ``stage1``: ours (pre-tiled views, only real views through the tower, masked_scatter, batch 4) vs the
  reference (in-step image loading and tiling, padded views too, per-token splice, batch 4);
* ``pointwise`` (not in the default ``--parts``): stage 2's pointwise formulation, 1 positive + ``--negatives``
  candidates per conversation, per ``stage2.prefix_sharing`` mode (``--pointwise-sharing``); MFU counts the
  tokens the packed layout runs (the conversation once, every candidate suffix once) whatever the mode;
* ``rerank``: latency of one 10-candidate request and throughput at 8 requests per call (the prompt once,
  every candidate's answer packed after it, or continued from copies of its KV cache: ``--rerank-sharing``)
  vs the naive reranker (re-encodes every candidate's views per request).

MFU counts model FLOPs: 2 N per token forward and 2 N backward (activation gradients; LoRA's weight
gradients are negligible and frozen weights get none), N = the language model's matmul parameters
(output layer included, embedding lookup excluded), plus causal attention; gradient checkpointing's
recomputation is not counted (HFU adds it). Peak bf16 dense: 989 TFLOP/s (H100/H200 SXM).

    python bench/gpu_7b.py --data .benchdata            # on a GPU machine (see bench/RESULTS.md)
    python bench/gpu_7b.py --data .benchdata --tiny     # toy shapes on CPU: checks the code path only

``--data`` holds ``tokenizer/`` (SmolLM2's, saved with save_pretrained) and ``catalog/`` (``lavic synth``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

#: The paper's candidate order, "ID: title" then the 5 vectors (the listwise prompt the reference scripts use).
ID_TITLE_VECTORS = {"listwise_candidate": "{label}: {title}{image}\n"}

PEAK_TFLOPS = 989.0


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Bench:
    def __init__(self, args):
        import torch

        from lavic_ray.data.layout import Catalog, read_conversations

        self.args = args
        self.cuda = torch.cuda.is_available() and not args.tiny
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.tok = self.tokenizer()
        self.image_token_id = self.tok.convert_tokens_to_ids("<image>")
        root = Path(args.data) / "catalog"
        self.catalog = Catalog.load(root)
        self.convs = read_conversations(root / "synthetic" / "train.jsonl", ("candidates_st",))
        self.cfg = self.config()
        self.processor = self.image_processor()
        if self.cuda:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 1024**3 / total))

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(Path(self.args.data) / "tokenizer")

    def image_processor(self):
        from lavic_ray.model.checkpoints import make_image_processor

        return make_image_processor(self.cfg.vision_config.image_size)

    def base_model(self):
        """A fresh LlavaNextForConditionalGeneration (random weights at ``self.cfg``'s shapes)."""
        import torch
        from transformers import LlavaNextForConditionalGeneration

        torch.manual_seed(0)
        old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # build in bf16 directly: an fp32 7B would not fit the cap
        try:
            with torch.device(self.device):
                return LlavaNextForConditionalGeneration(self.cfg)
        finally:
            torch.set_default_dtype(old)

    def config(self):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

        if self.args.tiny:
            cfg = LlavaNextConfig(
                vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                               image_size=56, patch_size=14),
                text_config=LlamaConfig(vocab_size=len(self.tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2),
                image_token_index=self.image_token_id, image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]])
        else:
            from memory_a100 import llava_7b_config

            cfg = llava_7b_config()
            cfg.text_config.vocab_size = len(self.tok)
            cfg.image_token_id = cfg.image_token_index = self.image_token_id
        cfg.text_config.pad_token_id = self.tok.pad_token_id
        cfg._attn_implementation = "sdpa"
        cfg.text_config._attn_implementation = "sdpa"
        cfg.vision_config._attn_implementation = "sdpa"
        return cfg

    # ------------------------------------------------------------------ model
    def model(self, where: str, r: int, alpha: int, dropout: float):
        import torch

        from lavic_ray.config import LoraConfig
        from lavic_ray.model.lavic import LaViC
        from lavic_ray.model.lora import add_lora

        if self.cuda:
            torch.cuda.empty_cache()
        vlm = self.base_model()
        vlm = add_lora(vlm, where, LoraConfig(r=r, alpha=alpha, dropout=dropout))
        if self.args.compile and where == "llm":  # regional compilation: each decoder layer, dynamic sequence lengths
            for layer in vlm.get_base_model().model.language_model.layers:
                layer.compile(dynamic=True)
        lavic = LaViC(vlm, self.image_token_id).to(self.device)
        params = [p for p in lavic.parameters() if p.requires_grad]
        return lavic, torch.optim.AdamW(params, lr=1e-5)

    def llm_matmul_params(self, lavic) -> int:
        base = lavic.base
        emb = base.get_input_embeddings().weight.numel()
        lm = base.model.language_model
        return sum(p.numel() for n, p in lm.named_parameters() if "lora_" not in n) - emb + base.lm_head.weight.numel()

    def model_flops(self, lavic, lengths: list[int]) -> float:
        """Training FLOPs (forward + activation-gradient backward) for rows of these lengths."""
        t = self.cfg.text_config
        n = self.llm_matmul_params(lavic)
        attn = sum(2 * s * s * t.hidden_size * t.num_hidden_layers for s in lengths)  # causal QK^T + AV, forward
        return 2 * (2 * n * sum(lengths) + attn)

    def checkpointing(self, lavic, on: bool, skip_last: int = 0):
        base = lavic.base
        if not on:
            base.gradient_checkpointing_disable()
            return
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        layers = base.model.language_model.layers
        for layer in layers[len(layers) - skip_last:] if skip_last else []:
            layer.gradient_checkpointing = False

    def peak(self) -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 1024**3, 2) if self.cuda else None

    def reset_peak(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def precision(self):
        """``--autocast``: every variant (ours and the reference alike) under bf16 autocast."""
        import contextlib

        import torch

        if getattr(self.args, "autocast", False):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def timed(self, fn, steps: int, warmup: int) -> list[float]:
        with self.precision():
            for _ in range(warmup):
                fn()
            sync()
            out = []
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                sync()
                out.append(time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------ data
    def stage2_samples(self):
        import dataclasses

        from lavic_ray.data.layout import read_conversations
        from lavic_ray.model.formulations import listwise_samples

        samples = listwise_samples(self.convs, "candidates_st", seed=0)
        if self.args.conversations:
            real = read_conversations(self.args.conversations, ())
            samples = [dataclasses.replace(s, conv=real[k % len(real)]) for k, s in enumerate(samples)]
        return samples

    def cands(self, ids):
        return [(c, self.catalog[c].title) for c in ids]

    def image_path(self, item_id):
        ims = self.catalog[item_id].images
        return ims[0].path if ims else None

    def table(self, lavic):
        import torch

        from lavic_ray.model.lavic import NUM_VECTORS

        g = torch.Generator(device="cpu").manual_seed(0)
        ids = self.catalog.ids()
        vec = torch.randn(len(ids), NUM_VECTORS, lavic.hidden_size, generator=g)
        vec = lavic.scale(vec.to(self.device, self.dtype))
        index = {i: k for k, i in enumerate(ids)}
        return lambda items: vec[torch.tensor([index[i] for i in items], device=self.device)]

    # ------------------------------------------------------------------ parts
    def stage2(self) -> list[dict]:
        from lavic_ray.config import PromptsConfig
        from lavic_ray.model.prompts import PromptBuilder, collate

        import reference

        a = self.args
        lavic, opt = self.model("llm", 16, 32, a.dropout)
        lavic.train()
        builder = PromptBuilder(self.tok, self.image_token_id, 1024, PromptsConfig(**ID_TITLE_VECTORS))
        samples = self.stage2_samples()
        lookup = self.table(lavic)
        rows, it = [], iter(range(10**9))

        def ours(mb):
            def step():
                k = next(it)
                batch = [samples[(k * mb + j) % len(samples)] for j in range(mb)]
                enc = [builder.listwise(s.conv.turns(), self.cands(s.candidates), s.answer) for s in batch]
                b = collate(enc, self.tok.pad_token_id, "right").to(self.device)
                out = lavic(b.input_ids, b.attention_mask, vectors=lookup(b.images), labels=b.labels)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                step.lengths.append(b.attention_mask.sum(1).tolist())
            step.lengths = []
            return step

        def ref():
            def step():
                s = samples[next(it) % len(samples)]
                enc = builder.listwise(s.conv.turns(), self.cands(s.candidates), s.answer)
                reference.stage2_step(lavic, self.processor, enc, [self.image_path(c) for c in s.candidates], opt)
                step.lengths.append([len(enc.input_ids)])
            step.lengths = []
            return step

        # the first variant runs twice: its first pass warms the allocator and kernels for all
        gc0 = "all" if a.checkpointing else "none"
        variants = [("ours", a.batch, gc0, 0)] + [("ours", mb, gc0, 0) for mb in [a.batch] + a.batches] + \
                   [("ours", a.batches[-1] if a.batches else a.batch, f"all but last {k}", k) for k in a.skip_last] + \
                   [("reference", 1, "none", 0)]
        for v, (name, mb, gc, skip) in enumerate(variants):
            self.checkpointing(lavic, gc != "none", skip)
            self.reset_peak()
            fn = ours(mb) if name == "ours" else ref()
            try:
                times = self.timed(fn, a.steps if name == "ours" else a.steps * a.batch, a.warmup)
                if v == 0:
                    continue
                if a.profile and name == "ours" and mb == max([a.batch] + a.batches) and gc == gc0:
                    rows.append(self.profile(fn, mb))
            except RuntimeError as e:  # torch.OutOfMemoryError included
                rows.append({"part": "stage2", "impl": name, "micro_batch": mb, "checkpointing": gc, "error": str(e).splitlines()[0][:200]})
                opt.zero_grad(set_to_none=True)
                print(json.dumps(rows[-1]), flush=True)
                continue
            lengths = fn.lengths[a.warmup:]
            step_s = statistics.median(times)
            flops = statistics.median(self.model_flops(lavic, ln) for ln in lengths)
            rows.append({"part": "stage2", "impl": name, "micro_batch": mb, "checkpointing": gc,
                         "step_s": round(step_s, 4), "samples_per_s": round(mb / step_s, 2),
                         "tokens_per_s": round(statistics.mean(sum(ln) for ln in lengths) / step_s, 1),
                         "mean_tokens_per_sample": round(statistics.mean(x for ln in lengths for x in ln), 1),
                         "mfu": round(flops / step_s / (PEAK_TFLOPS * 1e12), 4) if self.cuda else None,
                         "lora_dropout": a.dropout, "compiled": a.compile, "autocast": a.autocast,
                         "peak_gib": self.peak(), "cap_gib": a.cap_gib})
            print(json.dumps(rows[-1]), flush=True)
        del lavic, opt
        return rows

    def pointwise(self) -> list[dict]:
        """Stage 2, pointwise formulation: each conversation's candidates (1 positive + ``--negatives``) scored
        yes/no after it, per ``stage2.prefix_sharing`` mode; the balanced yes/no NLL as in training."""
        import torch

        from lavic_ray.model.prompts import PromptBuilder
        from lavic_ray.model.scoring import pointwise_log_probs
        from lavic_ray.model.formulations import pointwise_samples

        a = self.args
        lavic, opt = self.model("llm", 16, 32, a.dropout)
        lavic.train()
        builder = PromptBuilder(self.tok, self.image_token_id, 1024)
        samples = pointwise_samples(self.convs, "candidates_st", 0, a.negatives)
        lookup = self.table(lavic)
        rows = []

        def batch_of(k, mb):  # every variant sees the same samples in the same order
            return [samples[(k * mb + j) % len(samples)] for j in range(mb)]

        def requests_of(batch):
            return [(s.conv.turns(), self.cands(s.candidates)) for s in batch]

        def packed_tokens(requests):  # the conversation once, every suffix once, cut as pointwise_log_probs cuts them
            parts = [builder.pointwise_parts(conv, c) for conv, c in requests]
            return sum(len(prefix.input_ids) + sum(map(len, suffixes)) for prefix, suffixes in parts)

        def step_fn(mb, sharing, gc):
            it = iter(range(10**9))

            def step():
                batch = batch_of(next(it), mb)
                lp, tokens = lavic(fn=pointwise_log_probs, builder=builder, requests=requests_of(batch), lookup=lookup,
                                   max_rows=None, sharing=sharing, gradient_checkpointing=gc)
                positive = torch.tensor([p for s in batch for p in s.positive], device=lp.device)
                nll = -torch.where(positive, lp[:, 0], lp[:, 1])
                loss = nll[positive].mean() / 2 + nll[~positive].mean() / 2
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                step.tokens.append(tokens)
            step.tokens = []
            return step

        gc = a.checkpointing
        modes = [m for m in a.pointwise_sharing.split(",") if not (gc and m == "cache")]
        variants = [(modes[0], a.batch)] + [(m, mb) for m in modes for mb in [a.batch] + a.batches]
        for v, (mode, mb) in enumerate(variants):  # the first runs twice: its first pass warms up
            self.checkpointing(lavic, gc)
            self.reset_peak()
            fn = step_fn(mb, mode, gc)
            impl = f"ours-{mode}"
            try:
                times = self.timed(fn, a.steps, a.warmup)
                if v == 0:
                    continue
                if a.profile and mb == a.batch:
                    rows.append(self.profile(fn, mb, f"pointwise {impl}"))
            except RuntimeError as e:
                rows.append({"part": "pointwise", "impl": impl, "micro_batch": mb, "error": str(e).splitlines()[0][:200]})
                opt.zero_grad(set_to_none=True)
                print(json.dumps(rows[-1]), flush=True)
                continue
            step_s = statistics.median(times)
            # the tokens the packed layout runs (the work itself), counted outside the timed steps
            useful = statistics.mean(packed_tokens(requests_of(batch_of(k, mb))) for k in range(a.warmup, a.warmup + a.steps))
            flops = self.model_flops(lavic, [useful / mb] * mb)  # attention counted as causal over each conversation's row
            rows.append({"part": "pointwise", "impl": impl, "micro_batch": mb, "candidates": 1 + a.negatives,
                         "checkpointing": "all" if gc else "none", "step_s": round(step_s, 4),
                         "samples_per_s": round(mb / step_s, 2), "candidates_per_s": round(mb * (1 + a.negatives) / step_s, 1),
                         "tokens_run_per_step": round(statistics.mean(fn.tokens[a.warmup: a.warmup + a.steps]), 1), "useful_tokens_per_step": round(useful, 1),
                         "mfu": round(flops / step_s / (PEAK_TFLOPS * 1e12), 4) if self.cuda else None,
                         "autocast": a.autocast, "peak_gib": self.peak(), "cap_gib": a.cap_gib})
            print(json.dumps(rows[-1]), flush=True)
        del lavic, opt
        return rows

    def profile(self, fn, mb, part: str = "stage2") -> dict:
        """One profiled step: busy time against wall time, and the top operators (kernels on a GPU,
        self CPU time on a CPU)."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        sync()
        t0 = time.perf_counter()
        with profile(activities=acts) as prof, self.precision():
            fn()
            sync()
        wall = time.perf_counter() - t0
        events = prof.key_averages()
        if self.cuda:
            attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        else:
            attr = "self_cpu_time_total"
        busy = sum(getattr(e, attr, 0) for e in events) / 1e6
        top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:15]
        row = {"part": f"{part}-profile", "micro_batch": mb, "wall_s": round(wall, 4), "busy_s": round(busy, 4),
               "ops": sum(e.count for e in events if getattr(e, attr, 0) > 0), "measure": attr,
               "top": [(e.key[:60], e.count, round(getattr(e, attr, 0) / 1e3, 1),
                        round(100 * getattr(e, attr, 0) / 1e6 / max(busy, 1e-9), 1)) for e in top]}
        print(json.dumps(row), flush=True)
        return row

    def stage1(self) -> list[dict]:
        from lavic_ray.model.prompts import PromptBuilder, collate
        from lavic_ray.model.views import pixel_views
        from lavic_ray.train.stage1 import stage1_examples

        import reference

        a = self.args
        lavic, opt = self.model("vision", 8, 32, 0.1)
        lavic.train()
        builder = PromptBuilder(self.tok, self.image_token_id, 512)
        examples = stage1_examples(self.catalog)
        mb = 4
        batches = [examples[i: i + mb] for i in range(0, len(examples) - mb + 1, mb)][: a.warmup + a.steps]
        cached = {}  # ours: views tiled once (the ViewCache), on the device
        for k, batch in enumerate(batches):
            px, sizes, present = pixel_views(self.processor, [e.image for e in batch])
            cached[k] = (px.to(self.device, self.dtype), sizes.to(self.device), present.to(self.device))
        enc = [collate([builder.stage1(e.title, e.description, e.item_id) for e in b], self.tok.pad_token_id, "right")
               for b in batches]
        rows, it = [], iter(range(10**9))

        def ours():
            k = next(it) % len(batches)
            b = enc[k].to(self.device)
            px, sizes, present = cached[k]
            out = lavic(b.input_ids, b.attention_mask, labels=b.labels, pixel_values=px, image_sizes=sizes, present=present)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def ref():
            k = next(it) % len(batches)
            reference.stage1_step(lavic, self.processor, enc[k], [e.image for e in batches[k]], opt)

        tokens = statistics.mean(int(e.attention_mask.sum()) for e in enc)
        # the first variant runs twice: its first pass warms the allocator and kernels for all
        ours_gc = (True, False) if a.checkpointing else (False,)
        variants = [("ours", ours, ours_gc[0])] + [("ours", ours, g) for g in ours_gc] + [("reference", ref, False)]
        for v, (name, fn, gc) in enumerate(variants):
            self.checkpointing(lavic, gc)
            self.reset_peak()
            try:
                times = self.timed(fn, a.steps, a.warmup)
                if v == 0:
                    continue
            except RuntimeError as e:
                rows.append({"part": "stage1", "impl": name, "checkpointing": gc, "error": str(e).splitlines()[0][:200]})
                opt.zero_grad(set_to_none=True)
                print(json.dumps(rows[-1]), flush=True)
                continue
            if a.profile and name == "ours" and v == 1:
                rows.append(self.profile(fn, mb, "stage1"))
            step_s = statistics.median(times)
            rows.append({"part": "stage1", "impl": name, "batch": mb, "checkpointing": gc, "step_s": round(step_s, 4),
                         "images_per_s": round(mb / step_s, 2), "tokens_per_s": round(tokens / step_s, 1),
                         "peak_gib": self.peak(), "cap_gib": a.cap_gib})
            print(json.dumps(rows[-1]), flush=True)
        del lavic, opt
        return rows

    def rerank(self) -> list[dict]:
        import torch

        from lavic_ray.config import PromptsConfig
        from lavic_ray.model.prompts import PromptBuilder
        from lavic_ray.model.formulations import score_batch

        import reference

        a = self.args
        lavic, _ = self.model("llm", 16, 32, 0.0)
        lavic.eval()
        builder = PromptBuilder(self.tok, self.image_token_id, 1024, PromptsConfig(**ID_TITLE_VECTORS))
        lookup = self.table(lavic)
        reqs = [(c.turns(), self.cands(c.candidate_list("candidates_st"))) for c in self.convs]
        rows, it = [], iter(range(10**9))

        def ours(n, formulation, sharing):
            def call():
                k = next(it)
                score_batch(lavic, builder, formulation, [reqs[(k * n + j) % len(reqs)] for j in range(n)], lookup,
                            sharing=sharing)
            return call

        def naive():
            turns, cands = reqs[next(it) % len(reqs)]
            reference.rerank(lavic, self.processor, *builder.listwise_answers(turns, cands),
                             [self.image_path(c) for c, _ in cands])

        variants = [(f"ours-{f}-{m}" if f != "listwise" else f"ours-{m}", ours(n, f, m), n)
                    for f in a.rerank_formulations.split(",") for m in a.rerank_sharing.split(",") for n in (1, 8)]
        variants.append(("naive", naive, 1))
        with torch.no_grad():
            for name, fn, n in variants:
                self.reset_peak()
                times = self.timed(fn, a.steps * 2, a.warmup)
                if a.profile and name.startswith("ours") and n == 1:
                    rows.append(self.profile(fn, n, f"rerank {name}"))
                call_s = statistics.median(times)
                rows.append({"part": "rerank", "impl": name, "requests_per_call": n, "latency_ms": round(1000 * call_s, 1),
                             "requests_per_s": round(n / call_s, 2), "p90_ms": round(1000 * sorted(times)[int(0.9 * len(times))], 1),
                             "peak_gib": self.peak()})
                print(json.dumps(rows[-1]), flush=True)
        del lavic
        return rows


def parser(doc: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO / ".benchdata"))
    p.add_argument("--parts", default="stage2,stage1,rerank")
    p.add_argument("--conversations", help="a conversations JSONL (e.g. the real Reddit-Amazon valid.jsonl) whose texts "
                                           "replace the synthetic ones in stage-2 prompts: real, longer contexts; the "
                                           "candidates stay the synthetic catalog's (titles and images)")
    p.add_argument("--tiny", action="store_true", help="toy shapes on CPU: checks the code path only")
    p.add_argument("--cap-gib", type=float, default=40.0)
    p.add_argument("--batch", type=int, default=4, help="stage-2 micro-batch (ours)")
    p.add_argument("--batches", type=int, nargs="*", default=[8, 16], help="more stage-2 micro-batches to measure (ours)")
    p.add_argument("--skip-last", type=int, nargs="*", default=[8, 16],
                   help="also try checkpointing all but the last k layers (at the largest micro-batch)")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="ours without gradient checkpointing (the small model's CPU preset)")
    p.add_argument("--dropout", type=float, default=0.05, help="stage-2 LoRA dropout (the 7B preset's: 0.05)")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (stage 2 and rerank)")
    p.add_argument("--profile", action="store_true", help="profile one step of ours: stage 2 (largest micro-batch), stage 1, "
                                                                   "a 1-request rerank call")
    p.add_argument("--autocast", action="store_true", help="run every variant under bf16 autocast (engine.precision "
                                                           "bf16-mixed; on a CPU with AVX-512 BF16 or AMX)")
    p.add_argument("--negatives", type=int, default=9, help="pointwise: negatives per positive (stage2.negatives)")
    p.add_argument("--pointwise-sharing", default="packed,cache,none",
                   help="pointwise: the prefix-sharing modes to time (cache is skipped under gradient checkpointing)")
    p.add_argument("--rerank-sharing", default="packed,cache",
                   help="rerank: the prefix-sharing modes of ours to time (packed: answers packed after the prompt under a "
                        "block mask; cache: answers continued from copies of the prompt's KV cache)")
    p.add_argument("--rerank-formulations", default="listwise",
                   help="rerank: listwise (the paper's; the naive reranker is listwise) and/or pointwise")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_7b.json"))
    return p


def main(cls=None, a=None) -> int:
    import torch

    a = a or parser().parse_args()
    bench = (cls or Bench)(a)
    info = {"device": torch.cuda.get_device_name(0) if bench.cuda else "cpu", "torch": torch.__version__,
            "bench": type(bench).__name__, "tiny": a.tiny, "autocast": a.autocast, "date": time.strftime("%Y-%m-%d")}
    import transformers

    info["transformers"] = transformers.__version__
    print(json.dumps(info), flush=True)
    rows, ok = [info], True
    for part in a.parts.split(","):
        try:
            rows += getattr(bench, part)()
        except Exception as e:  # one broken part must not lose the others' figures
            traceback.print_exc()
            rows.append({"part": part, "error": f"{type(e).__name__}: {e}"[:300]})
            ok = False
        if bench.cuda:
            torch.cuda.empty_cache()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    for part in ("stage1", "stage2"):  # the stage-2 line last
        ours = [r for r in rows if r.get("part") == part and r.get("impl") == "ours" and "step_s" in r]
        ref = [r for r in rows if r.get("part") == part and r.get("impl") == "reference" and "step_s" in r]
        if ours and ref:
            key = "samples_per_s" if part == "stage2" else "images_per_s"
            best = max(ours, key=lambda r: r[key])
            setting = {k: best[k] for k in ("micro_batch", "checkpointing", "compiled") if k in best}
            print(f"({part}: ours {best[key]} vs reference {ref[0][key]} {key}; ours at {setting})", flush=True)
            print(f"{part} speedup: {best[key] / ref[0][key]:.2f}x", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
