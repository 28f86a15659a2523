"""Training loops without Ray: resume round trip, checkpoint safety, stage-2 samples."""

import json
import math
import shutil
import tempfile
from pathlib import Path
import random

import pytest

from lavic_ray.config import load_config
from lavic_ray.data.records import Conversation
from lavic_ray.train.reporting import LATEST, LocalReporter
from lavic_ray.train.run import run_local
from lavic_ray.model.formulations import listwise_samples, pointwise_samples, yes_no_loss


def tiny_cfg(tiny_dir, *extra, root=None):
    return load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={root}", "stage1.engine.kind=torch", "stage1.log_every=1",
                              "stage1.eval_limit=4", "stage1.max_length=128", "stage1.engine.micro_batch_size=2",
                              "stage1.checkpoint_every=1", *extra])


def test_stage1_resumes_from_its_last_checkpoint(tmp_path, tiny_dir, synth_root):
    out = tmp_path / "s1"
    first = run_local("stage1", tiny_cfg(tiny_dir, "stage1.max_steps=2", root=synth_root), out)
    assert first["step"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file()  # PEFT format
    assert (out / "run" / "checkpoints" / LATEST).read_text().strip() == "step_00000002"
    second = run_local("stage1", tiny_cfg(tiny_dir, "stage1.max_steps=4", root=synth_root), out)
    assert second["step"] == 4
    steps = [json.loads(x)["step"] for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and steps[-2:] == [3, 4]  # the count continues, nothing repeated
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history if "train_loss" in h] == [1, 2, 3, 4]
    assert "valid_ppl" in history[-1]
    assert json.loads((out / "resumed.json").read_text()) == {"resumed_at_steps": [2]}


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files (TFRecord frames: length, crc, event proto, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos: pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12: pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_tensorboard_tracking_records_every_reported_metric(tmp_path, tiny_dir, synth_root):
    out = tmp_path / "s1"
    run_local("stage1", tiny_cfg(tiny_dir, "stage1.max_steps=2", "tracking.backend=tensorboard", root=synth_root), out)
    scalars = read_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["train_loss"]] == [1, 2]
    assert [step for step, _ in scalars["valid_ppl"]] == [2]


def test_an_interrupted_checkpoint_never_replaces_the_last_good_one(tmp_path):
    rep = LocalReporter(tmp_path)
    d = rep.new_checkpoint_dir()
    (d / "x").write_text("complete")
    rep.report({"step": 5}, d)
    good = rep.latest()
    assert good.name == "step_00000005"
    half = rep.new_checkpoint_dir()  # a write that dies before report() is called
    (half / "x").write_text("partial")
    assert rep.latest() == good and (good / "x").read_text() == "complete"
    for step in (6, 7, 8):
        d = rep.new_checkpoint_dir()
        rep.report({"step": step}, d)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == ["step_00000007", "step_00000008"] and rep.latest().name == "step_00000008"


def test_listwise_samples_insert_the_ground_truth_without_mutating():
    cands = tuple(f"C{i:09d}" for i in range(10))
    conv = Conversation("f:1", "<submission>x</submission>", ("G000000001", "C000000003"), {"candidates_st": cands})
    samples = listwise_samples([conv], "candidates_st", seed=0)
    assert len(samples) == 2  # one per ground-truth item
    inserted, present = samples
    assert len(inserted.candidates) == 10 and inserted.candidates[inserted.answer] == "G000000001"
    assert "C000000003" in inserted.candidates  # another ground truth is never the one dropped
    # it overwrites one candidate in place (the reference's rule): the others keep their positions
    assert sum(a != b for a, b in zip(inserted.candidates, cands)) == 1
    assert present.candidates == cands and present.candidates[present.answer] == "C000000003"
    assert conv.candidates["candidates_st"] == cands
    assert listwise_samples([conv], "candidates_st", seed=0) == samples  # deterministic


def test_pointwise_samples():
    cands = tuple(f"C{i:09d}" for i in range(10))
    conv = Conversation("f:1", "<submission>x</submission>", ("C000000002", "C000000005"), {"candidates_st": cands})
    s = pointwise_samples([conv], "candidates_st", seed=0, negatives=3)
    assert len(s) == 2  # one per ground-truth item
    for sample, gt in zip(s, ("C000000002", "C000000005")):
        assert sample.positive == (True, False, False, False) and sample.candidates[0] == gt
        # negatives come from the list, and another ground truth is never one of them
        assert set(sample.candidates[1:]) <= set(cands) - {"C000000002", "C000000005"}
    every = pointwise_samples([conv], "candidates_st", seed=0, negatives=50)[0]
    assert len(every.candidates) == 9 and sum(every.positive) == 1
    assert pointwise_samples([conv], "candidates_st", seed=0, negatives=3) == s  # deterministic


def test_yes_no_loss_is_balanced():
    import torch

    # 1 positive, 3 negatives; columns: log P(yes), log P(no) over the vocabulary
    lp = torch.tensor([[-1.0, -3.0], [-2.0, -1.5], [-4.0, -0.5], [-2.5, -2.5]])
    positives = [(True, False, False, False)]
    vocab = yes_no_loss(lp, positives)
    assert math.isclose(float(vocab), (1.0 + (1.5 + 0.5 + 2.5) / 3) / 2, rel_tol=1e-6)  # half on the positive, half on the negatives' mean
    with pytest.raises(ValueError, match="candidates"):
        yes_no_loss(lp, [(True, False)])


def test_stage2_needs_the_table_for_images(tmp_path, tiny_dir, synth_root):
    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}"])
    with pytest.raises(ValueError, match="embedding table"):
        run_local("stage2", cfg, tmp_path / "s2", table=None)


def test_length_grouped_micro_batches_cover_each_example_once_and_pad_less():
    from lavic_ray.config import Stage2Config
    from lavic_ray.train.loop import _shard_batches

    rng = random.Random(1)
    lengths = [rng.choice([50, 400, 1000]) + rng.randrange(20) for _ in range(1000)]
    cfg = Stage2Config(engine={"micro_batch_size": 8})

    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    for size in (1, 2):
        plain = [_shard_batches(1000, cfg.model_copy(update={"group_by_length": False}), 0, r, size, lengths) for r in range(size)]
        grouped = [_shard_batches(1000, cfg, 0, r, size, lengths) for r in range(size)]
        # the same examples on each rank, each once; the same number of micro-batches per rank
        for p, g in zip(plain, grouped):
            assert sorted(i for b in p for i in b) == sorted(i for b in g for i in b)
            assert len(p) == len(g) and all(len(b) == 8 for b in g)
        assert waste([b for g in grouped for b in g]) < 0.2 * waste([b for p in plain for b in p])
        # shuffled: not one long sorted run (first window's lengths are not monotone)
        firsts = [max(lengths[i] for i in b) for b in grouped[0][:32]]
        assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    # deterministic per (seed, epoch), different across epochs
    assert _shard_batches(1000, cfg, 3, 0, 1, lengths) == _shard_batches(1000, cfg, 3, 0, 1, lengths)
    assert _shard_batches(1000, cfg, 3, 0, 1, lengths) != _shard_batches(1000, cfg, 4, 0, 1, lengths)


@pytest.mark.parametrize("kind", ["torch", "deepspeed"])
def test_bf16_mixed_runs_the_forward_in_bf16_and_keeps_fp32_weights(kind):
    import torch

    from lavic_ray.config import EngineConfig
    from lavic_ray.train.engine import make_engine

    if kind == "deepspeed":
        pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    before = [p.detach().clone() for p in net.parameters()]
    engine = make_engine(net, EngineConfig(kind=kind, precision="bf16-mixed", zero_stage=0, micro_batch_size=4), lr=1e-2,
                    weight_decay=0.0)
    x = torch.randn(4, 8)
    out = engine(x)
    assert out.dtype == torch.bfloat16  # the matmuls ran under bf16 autocast
    loss = out.float().pow(2).mean()
    engine.backward(loss)
    assert engine.step()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    fp32 = make_engine(torch.nn.Linear(8, 1), EngineConfig(kind="torch", precision="fp32"), lr=1e-2, weight_decay=0.0)
    assert fp32(x).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_mixed_only_where_bf16_is_native(monkeypatch, caplog, native):
    """``auto``: bf16 autocast on a CPU with AVX-512 BF16 / AMX, fp32 on one without (emulated bf16 ran 20-36x slower)."""
    import torch

    from lavic_ray.config import EngineConfig
    from lavic_ray.model import precision
    from lavic_ray.train.engine import make_engine

    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: native)
    assert precision.bf16_is_native("cpu") is native
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "fp32")
    import logging

    with caplog.at_level(logging.WARNING, logger="lavic_ray.model.precision"):
        for fixed in ("fp32", "bf16", "bf16-mixed", "fp16"):
            assert precision.resolve_precision(fixed, "cpu") == fixed  # a concrete setting is never second-guessed
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # ... but bf16 on a CPU that emulates it is said plainly, once per bf16 setting
    assert (len(warned) == 2 and all("without native bf16" in m for m in warned)) if not native else not warned
    cfg = EngineConfig(kind="torch", precision="auto")
    engine = make_engine(torch.nn.Linear(8, 1), cfg, lr=1e-2, weight_decay=0.0)
    assert engine.autocast is native and engine.cfg.precision == ("bf16-mixed" if native else "fp32")
    assert engine(torch.randn(2, 8)).dtype == (torch.bfloat16 if native else torch.float32)
    assert cfg.precision == "auto"  # the caller's config is left as written


@pytest.mark.parametrize("native", [True, False])
def test_cpu_summary_names_the_cpu_its_cores_and_whether_bf16_is_native(monkeypatch, native):
    """Figures name the machine they ran on: the quickstart's report and the bench scripts write this."""
    import os

    import torch

    from lavic_ray.model import precision

    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: native)
    text = precision.cpu_summary()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f", {cores} cores, {torch.backends.cpu.get_cpu_capability()}, " in text
    assert text.endswith("bf16 native" if native else "bf16 emulated")


def test_both_engines_warm_up_the_learning_rate_on_one_linear_schedule():
    import torch

    from lavic_ray.config import EngineConfig
    from lavic_ray.train.engine import make_engine

    pytest.importorskip("deepspeed")
    seen = {}
    for kind in ("torch", "deepspeed"):
        engine = make_engine(torch.nn.Linear(4, 1), EngineConfig(kind=kind, zero_stage=2, micro_batch_size=2), lr=1e-2,
                        weight_decay=0.0, warmup_steps=4)
        lrs = []
        for _ in range(6):
            lrs.append(engine.lr())
            engine.backward(engine(torch.randn(2, 4)).pow(2).mean())
            engine.step()
        seen[kind] = lrs
    want = [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]  # the first step already moves (DeepSpeed's WarmupLR starts at 0)
    for kind, lrs in seen.items():
        assert lrs == pytest.approx(want), kind
    # then a decay to 0 at the last step, the same on both engines
    for decay, want in (("linear", [1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2 * 3 / 4, 1e-2 * 2 / 4, 1e-2 / 4, 0.0]),
                        ("cosine", [1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2 * (1 + math.cos(math.pi / 4)) / 2, 5e-3,
                                    1e-2 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])):
        for kind in ("torch", "deepspeed"):
            engine = make_engine(torch.nn.Linear(4, 1), EngineConfig(kind=kind, zero_stage=2, micro_batch_size=2), lr=1e-2,
                                 weight_decay=0.0, warmup_steps=3, total_steps=7, decay=decay)
            lrs = []
            for _ in range(7):
                lrs.append(engine.lr())
                engine.backward(engine(torch.randn(2, 4)).pow(2).mean())
                engine.step()
            assert lrs == pytest.approx(want, abs=1e-9), (decay, kind, lrs)


class _Scripted:
    """A minimal Task whose validation metric follows a script (to test early stopping)."""

    def __new__(cls, script, higher=True):
        import torch

        from lavic_ray.train.loop import Task

        class T(Task):
            name = "scripted"
            best_metric = "valid_hr@1"
            higher_is_better = higher

            def __init__(self):
                self.net = torch.nn.Linear(2, 1)
                self.calls = 0

            def module(self):
                return self.net

            def train_examples(self):
                return list(range(64))

            def loss(self, engine, batch):
                x = torch.ones(len(batch), 2)
                return engine(x).pow(2).mean(), len(batch)

            def validate(self, module):
                v = script[min(self.calls, len(script) - 1)]
                self.calls += 1
                return {"valid_hr@1": v}

            def save_adapter(self, module, directory):
                Path(directory).mkdir(parents=True, exist_ok=True)

        return T()


def test_a_step_budget_caps_the_epochs_of_a_larger_dataset_only():
    from lavic_ray.config import Stage1Config
    from lavic_ray.train.loop import planned_steps

    cfg = Stage1Config(epochs=4, step_budget=210)
    assert planned_steps(cfg, 51) == 204  # the default catalog: its 4 epochs, untouched
    assert planned_steps(cfg, 73) == 210  # a 600-item catalog: the budget
    assert planned_steps(Stage1Config(epochs=4), 73) == 292  # no budget: every epoch
    assert planned_steps(cfg.model_copy(update={"max_steps": 300}), 73) == 300  # max_steps overrides both


def test_a_run_on_its_step_budget_stops_there_and_validates_its_last_step(tmp_path):
    from lavic_ray.config import Stage2Config
    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import LocalReporter

    # 64 examples in micro-batches of 2: 32 steps an epoch, 3 epochs = 96 steps, the budget 40
    cfg = Stage2Config(epochs=3, step_budget=40, eval_every=16, log_every=1, lr_decay="linear",
                       engine={"kind": "torch", "micro_batch_size": 2})
    final = train(_Scripted([0.1, 0.2, 0.3]), cfg, LocalReporter(tmp_path / "run"), tmp_path)
    assert final["step"] == 40
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in hist if "valid_hr@1" in h] == [16, 32, 40]
    assert [h["epoch"] for h in hist if h["step"] == 40] == [1]  # it stopped inside the second epoch
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the decay ends at the budget, not at 3 epochs


def test_under_ray_train_the_best_adapter_is_rays_best_checkpoint(tmp_path):
    """A reporter that owns the best (Ray Train) gets a checkpoint at every improving validation, each
    with its ``checkpoint_score``; the loop writes no adapter/ itself; ``install_adapter`` copies the
    adapter of the best scored checkpoint Ray kept (the last one when the run keeps the last)."""
    from types import SimpleNamespace

    from ray.train import Checkpoint

    from lavic_ray.config import Stage2Config
    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import SCORE_KEY, UNSCORED, Reporter
    from lavic_ray.train.run import install_adapter

    class RayLike(Reporter):
        owns_best = True

        def __init__(self):
            self.reported = []

        def new_checkpoint_dir(self):  # under the test's folder, not /tmp (Ray Train's reporter removes its own)
            return Path(tempfile.mkdtemp(dir=tmp_path))

        def report(self, metrics, checkpoint_dir=None):
            if checkpoint_dir is not None:
                kept = tmp_path / "ckpts" / f"step{metrics['step']}"
                shutil.copytree(checkpoint_dir, kept)
                self.reported.append((Checkpoint.from_directory(str(kept)), metrics))

    task = _Scripted([0.2, 0.6, 0.3, 0.1])
    save = task.save_adapter

    def save_adapter(module, directory):  # which step the adapter is from
        save(module, directory)
        (Path(directory) / "adapter_config.json").write_text(json.dumps({"step": len(rep.reported)}))

    task.save_adapter = save_adapter
    rep = RayLike()
    out = tmp_path / "run"
    cfg = Stage2Config(max_steps=9, eval_every=2, checkpoint_every=3, log_every=1, engine={"kind": "torch", "micro_batch_size": 2})
    train(task, cfg, rep, out)
    assert not (out / "adapter").exists()
    scores = {m["step"]: m[SCORE_KEY] for _, m in rep.reported}
    # validations at 2 (0.2, best), 4 (0.6, best), 6 (0.3), 8 (0.1), 9 (the last step, 0.1); checkpoints every 3
    # too; only a validation that set a new best is scored (the rest are kept for resuming only)
    assert scores == {2: 0.2, 3: UNSCORED, 4: 0.6, 6: UNSCORED, 9: UNSCORED}
    result = SimpleNamespace(best_checkpoints=rep.reported, checkpoint=rep.reported[-1][0], metrics=rep.reported[-1][1])
    install_adapter(result, out, ranked=True)
    info = json.loads((out / "adapter_step.json").read_text())
    assert info["step"] == 4 and info["kept"] == "best" and info["valid_hr@1"] == 0.6
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["step"] == 2  # the 3rd checkpoint: step 4
    install_adapter(result, out, ranked=False)
    assert json.loads((out / "adapter_step.json").read_text())["step"] == 9


def test_visual_negatives_are_the_candidates_that_look_most_like_the_positive():
    import torch

    from lavic_ray.model.table import VectorTable

    cands = tuple(f"C{i:09d}" for i in range(10))
    conv = Conversation("f:1", "<submission>x</submission>", ("C000000000",), {"candidates_st": cands})
    # each item its own direction; C3 and C7 lean towards C0's (C3 more)
    vecs = torch.eye(16)[:10].unsqueeze(1).repeat(1, 5, 1)
    vecs[3, :, 0], vecs[7, :, 0] = 2.0, 1.0
    table = VectorTable(list(cands), vecs)
    s = pointwise_samples([conv], "candidates_st", 0, negatives=2, similar=table.similarity)[0]
    assert s.candidates == ("C000000000", "C000000003", "C000000007") and s.positive == (True, False, False)
    assert pointwise_samples([conv], "candidates_st", 0, negatives=2)[0].candidates[0] == "C000000000"
    assert table.similarity("C000000000", ["C000000007", "NOPE000000"])[1] == -1.0


def test_under_ray_train_a_tie_keeps_the_earlier_best(tmp_path):
    """Validations 0.5, 0.5, 0.5: the first is the best (as on the local path); the later checkpoints of the
    tie are not scored, so Ray's ranking cannot prefer them."""
    from lavic_ray.config import Stage2Config
    from lavic_ray.train.loop import train
    from lavic_ray.train.reporting import SCORE_KEY, UNSCORED, Reporter

    class RayLike(Reporter):
        owns_best = True

        def __init__(self):
            self.scores = {}

        def new_checkpoint_dir(self):
            return Path(tempfile.mkdtemp(dir=tmp_path))

        def report(self, metrics, checkpoint_dir=None):
            if checkpoint_dir is not None:
                self.scores[metrics["step"]] = metrics[SCORE_KEY]

    rep = RayLike()
    cfg = Stage2Config(max_steps=3, eval_every=1, checkpoint_every=1, log_every=1, engine={"kind": "torch", "micro_batch_size": 2})
    train(_Scripted([0.5, 0.5, 0.5]), cfg, rep, tmp_path / "run")
    assert rep.scores == {1: 0.5, 2: UNSCORED, 3: UNSCORED}


def test_a_users_deepspeed_json_is_merged_over_the_computed_config(tmp_path):
    """engine.deepspeed_config: the LLaMA-Factory habit. Its values win, nested sections merge, "auto" keeps ours,
    and what the loop owns (batching, the schedule) cannot be changed behind its back."""
    import json

    from lavic_ray.config import EngineConfig
    from lavic_ray.errors import InvalidInput
    from lavic_ray.train.engine import deepspeed_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True, "offload_param": {"device": "cpu"}},
                                "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 0.5,
                                "bf16": {"enabled": "auto"}, "optimizer": {"params": {"betas": [0.9, 0.95]}}}))
    cfg = EngineConfig(micro_batch_size=4, grad_accumulation=2, precision="bf16", deepspeed_config=str(user))
    ds = deepspeed_config(cfg, lr=2e-4, weight_decay=0.0, warmup_steps=0)
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True, "offload_param": {"device": "cpu"}}
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 2e-4
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95]
    user.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    with pytest.raises(InvalidInput, match="engine.grad_accumulation"):
        deepspeed_config(cfg, lr=2e-4, weight_decay=0.0, warmup_steps=0)
    user.write_text("{not json")
    with pytest.raises(InvalidInput, match="is not JSON"):
        deepspeed_config(cfg, lr=2e-4, weight_decay=0.0, warmup_steps=0)


def test_zero3_builds_the_model_sharded_and_saves_a_whole_adapter(tmp_path, tiny_dir, synth_root):
    """engine.zero_stage=3: the checkpoint is built under deepspeed.zero.Init (each worker holds only its shard of
    the frozen weights), trains, and the LoRA adapter it saves is whole (gathered before it is written)."""
    pytest.importorskip("deepspeed")
    import torch
    from safetensors.torch import load_file

    from lavic_ray.train.common import trainable_lavic

    cfg = load_config(None, [f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}", "stage2.engine.kind=deepspeed",
                             "stage2.engine.zero_stage=3", "stage2.engine.micro_batch_size=2", "stage2.max_steps=2",
                             "stage2.eval_every=2", "stage2.eval_limit=4", "stage2.max_length=512", "stage2.log_every=1",
                             "stage2.use_images=false"])
    model, _ = trainable_lavic(cfg.model, cfg.stage2, "llm")
    weight = model.base.get_input_embeddings().weight
    assert weight.numel() == 0 and tuple(weight.ds_shape) == (1024, 64)  # sharded from the start, never whole here
    assert torch.isfinite(model.text_norm) and float(model.text_norm) > 0  # read from the gathered embeddings
    del model
    run_local("stage2", cfg, tmp_path / "s2")
    tensors = load_file(str(next((tmp_path / "s2" / "adapter").rglob("adapter_model.safetensors"))))
    lora_a = [t for k, t in tensors.items() if "lora_A" in k]
    assert lora_a and all(t.numel() > 0 and t.shape[0] == cfg.stage2.lora.r for t in lora_a)
    assert json.loads((tmp_path / "s2" / "history.json").read_text())[-1]["step"] == 2


def test_after_a_zero3_run_models_are_built_whole_again(tiny_dir):
    """The ZeRO-3 switch transformers reads is process-wide: it must not outlive the build of the model it was for."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from lavic_ray.model.checkpoints import load_checkpoint

    assert not is_deepspeed_zero3_enabled()
    assert load_checkpoint(str(tiny_dir)).model.get_input_embeddings().weight.numel() > 0


def test_bf16_is_native_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    """oneDNN says bf16 is supported on any AVX-512 CPU, and emulates it where there is no AVX-512 BF16 or AMX (4.4x
    slower than fp32 for a matmul on such a Xeon): native bf16 needs the CPU's own flag too."""
    import torch

    from lavic_ray.model import precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert not precision._cpu_has_native_bf16() and precision.concrete_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision._cpu_has_native_bf16() and precision.concrete_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert precision._cpu_has_native_bf16()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: None)  # no /proc/cpuinfo: oneDNN's answer
    assert precision._cpu_has_native_bf16()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # held to AVX2
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"amx_bf16"})
    assert not precision._cpu_has_native_bf16()
