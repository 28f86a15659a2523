"""The shared training driver: epochs, sharding, accumulation, validation, checkpoints, resume.

A stage supplies a :class:`Task` (its model, examples, batch forward and
validation); :func:`train` runs it the same way in one process and in each Ray
Train worker. It is a plain function: no Ray import, so it runs on a lone GPU box.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lavic_ray import storage
from lavic_ray.artifacts import atomic_write_text
from lavic_ray.config import StageConfig
from lavic_ray.errors import InvalidInput
from lavic_ray.train.engine import Engine, make_engine, world
from lavic_ray.train.reporting import SCORE_KEY, UNSCORED, Reporter, Tracker

log = logging.getLogger(__name__)


class Task(ABC):
    """What a stage must provide to :func:`train`."""

    name = ""
    #: validation metric to keep the best adapter by, and whether higher is better
    best_metric = ""
    higher_is_better = False

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The module being trained (a LaViC with a trainable LoRA)."""

    @abstractmethod
    def train_examples(self) -> list:
        """The training examples; micro-batches are lists of them."""

    @abstractmethod
    def loss(self, engine: Engine, batch: list) -> tuple[torch.Tensor, int]:
        """Loss of a micro-batch and the number of (non-padding) input tokens it processed."""

    @abstractmethod
    def validate(self, module: torch.nn.Module) -> dict:
        """Validation metrics (``best_metric`` among them), computed without gradients."""

    @abstractmethod
    def save_adapter(self, module: torch.nn.Module, directory: Path) -> None:
        """Write the trained adapter of ``module`` (possibly wrapped by the engine) to ``directory``."""

    def example_lengths(self) -> list[int] | None:
        """A cheap length estimate per training example (characters will do), for length-grouped
        micro-batches; None when lengths do not vary enough to matter."""
        return None


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    history: list[dict] = field(default_factory=list)
    #: the step of each resumption from a checkpoint (a restarted worker, a rerun)
    resumed_at: list[int] = field(default_factory=list)


#: shuffled micro-batches per window that length grouping sorts (HF's LengthGroupedSampler uses 50)
GROUP_WINDOW = 32


def _shard_batches(n: int, cfg: StageConfig, epoch: int, rank: int, size: int,
                   lengths: list[int] | None = None) -> list[list[int]]:
    """This rank's micro-batches of example indices for ``epoch`` (same count on every rank).

    With ``lengths`` (and ``cfg.group_by_length``) each window of ``GROUP_WINDOW``
    micro-batches is sorted by length before it is cut, so a micro-batch holds
    similar lengths and pads little; the window's micro-batches are then shuffled,
    so long and short ones still alternate. Deterministic for (seed, epoch).
    """
    rng = random.Random(f"{cfg.seed}:{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    mb = cfg.engine.micro_batch_size
    per_rank = (n // size) // mb * mb
    if per_rank == 0:
        raise InvalidInput(f"{n} training examples cannot fill one micro-batch of {mb} on each of {size} workers")
    mine = order[rank * per_rank: (rank + 1) * per_rank]
    if not (cfg.group_by_length and lengths is not None and mb > 1):
        return [mine[i: i + mb] for i in range(0, len(mine), mb)]
    out = []
    window = GROUP_WINDOW * mb
    for w in range(0, len(mine), window):
        chunk = sorted(mine[w: w + window], key=lambda i: lengths[i], reverse=True)
        group = [chunk[i: i + mb] for i in range(0, len(chunk), mb)]
        rng.shuffle(group)
        out.extend(group)
    return out


def planned_steps(cfg: StageConfig, steps_per_epoch: int) -> int:
    """The optimizer steps a run takes: ``max_steps`` if set, else its epochs' steps, at most ``step_budget``."""
    if cfg.max_steps:
        return cfg.max_steps
    steps = steps_per_epoch * cfg.epochs
    return min(steps, cfg.step_budget) if cfg.step_budget else steps


def train(task: Task, cfg: StageConfig, reporter: Reporter, out_dir: Path, tracker: Tracker | None = None) -> dict:
    """Run a stage to the end (or ``max_steps``), resuming from the reporter's checkpoint.

    Writes the best adapter (``keep: best``) or the last one to ``out_dir/adapter`` (rank 0) and returns
    the final metrics; ``tracker`` (rank 0's) receives every metric reported. Under a reporter that owns
    the best checkpoint (Ray Train), every improving validation is checkpointed with its score
    (``checkpoint_score``) and the driver installs the adapter from Ray's best (or last) checkpoint.
    """
    tracker = tracker or Tracker()
    torch.manual_seed(cfg.seed)
    rank, size = world()
    module = task.module()
    examples = task.train_examples()
    lengths = task.example_lengths() if cfg.group_by_length else None
    batches_per_epoch = len(_shard_batches(len(examples), cfg, 0, rank, size, lengths))
    steps_per_epoch = max(1, batches_per_epoch // cfg.engine.grad_accumulation)
    total_steps = planned_steps(cfg, steps_per_epoch)
    engine = make_engine(module, cfg.engine, cfg.lr, cfg.weight_decay, cfg.warmup_steps, total_steps, cfg.lr_decay)
    state = TrainState()
    with reporter.restored() as ckpt:
        if ckpt is not None:
            client = engine.load(ckpt)
            state = TrainState(**{k: v for k, v in client["train_state"].items() if k in TrainState.__dataclass_fields__})
            state.resumed_at.append(state.step)
            log.info("%s: resumed from %s at step %d (epoch %d, batch %d)", task.name, ckpt, state.step, state.epoch, state.batch_in_epoch)
    eval_every = cfg.eval_every or steps_per_epoch
    ckpt_every = cfg.checkpoint_every or eval_every
    out_dir = Path(out_dir)
    t0, tokens_seen, samples_seen, start_step = time.monotonic(), 0, 0, state.step
    window_loss, window_n = 0.0, 0
    log.info("%s: %d examples, %d workers, %d steps/epoch, %d steps%s", task.name, len(examples), size, steps_per_epoch,
             total_steps, f" (step_budget; {cfg.epochs} epochs would take {steps_per_epoch * cfg.epochs})"
             if not cfg.max_steps and total_steps < steps_per_epoch * cfg.epochs else "")
    done = state.step >= total_steps
    while not done:
        batches = _shard_batches(len(examples), cfg, state.epoch, rank, size, lengths)
        for b in range(state.batch_in_epoch, len(batches)):
            module.train()
            loss, n_tokens = task.loss(engine, [examples[i] for i in batches[b]])
            engine.backward(loss)
            stepped = engine.step()
            state.batch_in_epoch = b + 1
            tokens_seen += n_tokens
            samples_seen += len(batches[b])
            window_loss += float(loss.detach())
            window_n += 1
            if not stepped:
                continue
            state.step += 1
            if getattr(cfg, "elastic_threads", False) and not cfg.use_gpu and state.step % 10 == 0:  # stage 2's
                _grow_threads(task.name)
            if rank == 0:
                _write_progress(out_dir, state, total_steps, window_loss / max(window_n, 1), time.monotonic() - t0, start_step)
            metrics = None
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                dt = time.monotonic() - t0
                metrics = {"stage": task.name, "step": state.step, "epoch": state.epoch, "train_loss": window_loss / window_n,
                           "lr": engine.lr(), "samples_per_s": samples_seen * size / dt, "tokens_per_s": tokens_seen * size / dt,
                           "elapsed_s": dt, "eta_s": dt / max(1, state.step - start_step) * (total_steps - state.step)}
                window_loss, window_n = 0.0, 0
                log.info("%s step %d/%d loss %.4f lr %.2e %.1f samples/s %.0f tokens/s", task.name, state.step, total_steps,
                         metrics["train_loss"], metrics["lr"], metrics["samples_per_s"], metrics["tokens_per_s"])
            if state.step % eval_every == 0 or state.step == total_steps:
                metrics = {**(metrics or {"stage": task.name, "step": state.step, "epoch": state.epoch}),
                           **_validate(task, module, state, out_dir, rank, engine, cfg, write=not reporter.owns_best)}
            if metrics is not None:
                state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                tracker.log(metrics, state.step)
            want_ckpt = (state.step % ckpt_every == 0 or state.step == total_steps
                         or (reporter.owns_best and cfg.keep == "best" and bool(metrics and metrics.get("best"))))
            if want_ckpt:
                # every rank writes its own part (DeepSpeed shards); Ray Train merges what workers report
                d = reporter.new_checkpoint_dir()
                engine.save(d, {"train_state": state.__dict__})
                task.save_adapter(module, d / "adapter")  # every rank: a collective under ZeRO-3; rank 0 writes
                if rank == 0:
                    (d / "train_state.json").write_text(json.dumps(state.__dict__))
                reporter.report({**(metrics or {"stage": task.name, "step": state.step}),
                                 SCORE_KEY: _score(task, metrics)}, d)
            elif metrics is not None:
                reporter.report(metrics)
            if state.step >= total_steps:
                done = True
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    tracker.close()
    final = state.history[-1] if state.history else {"step": state.step}
    # under a reporter that owns the best (Ray Train) the driver installs the adapter from the run's checkpoints;
    # otherwise the last one, or the best if a validation saved one (decided from the state, the same on every rank)
    saved_best = cfg.keep == "best" and any(h.get("best") for h in state.history)
    if not reporter.owns_best and not saved_best:
        task.save_adapter(module, out_dir / "adapter")  # every rank (ZeRO-3); rank 0 writes
    if rank == 0:
        (out_dir).mkdir(parents=True, exist_ok=True)
        (out_dir / "history.json").write_text(json.dumps(state.history, indent=1))
        if state.resumed_at:
            (out_dir / "resumed.json").write_text(json.dumps({"resumed_at_steps": state.resumed_at}))
        if not reporter.owns_best and not saved_best:
            (out_dir / "adapter_step.json").write_text(json.dumps({"step": state.step, "kept": "last"}))
        for name in ("adapter", "adapter_step.json", "resumed.json", "progress.json", "history.json"):  # history last
            storage.publish(out_dir / name)  # under an object store (nothing to do on a shared volume)
    return final


def _write_progress(out_dir: Path, state: TrainState, total: int, loss: float, elapsed: float, start_step: int) -> None:
    """``progress.json`` for whoever watches the run (the console of the command that started it)."""
    valid = next((h for h in reversed(state.history) if any(k.startswith("valid_") for k in h)), None)
    status = f"loss {loss:.3f}"
    if valid is not None:
        key = next(k for k in ("valid_hr@1", "valid_ppl", "valid_loss") if k in valid) if any(
            k in valid for k in ("valid_hr@1", "valid_ppl", "valid_loss")) else None
        if key:
            status += f", {key} {valid[key]:.3f} at step {valid['step']}"
    done = state.step - start_step
    storage.publish(atomic_write_text(out_dir / "progress.json", json.dumps({
        "step": state.step, "total": total, "loss": loss, "status": status, "elapsed_s": round(elapsed, 1),
        "eta_s": round(elapsed / done * (total - state.step), 1) if done else None})))


def _grow_threads(name: str) -> None:
    """Take the node's idle CPUs as more torch threads (``elastic_threads``): when a run beside this one
    finishes, its cores would otherwise idle. Read from the 1-minute load average, so it reacts within a
    minute or so, and only grows (a run that starts beside it later gets its own CPUs from Ray)."""
    import os

    cpus, cur = os.cpu_count() or 1, torch.get_num_threads()
    idle = cpus - os.getloadavg()[0]
    if cur < cpus and idle >= 0.8:
        new = min(cpus, cur + int(idle + 0.2))
        torch.set_num_threads(new)
        log.info("%s: %d idle CPUs, %d -> %d torch threads", name, int(idle + 0.2), cur, new)


def _score(task: Task, metrics: dict | None) -> float:
    """A checkpoint's rank for Ray Train (higher is better): its validation metric when that validation set a
    new best (as the local path keeps it: a tie with an earlier best does not replace it), else :data:`UNSCORED`
    (a checkpoint kept for resuming only)."""
    value = (metrics or {}).get(task.best_metric)
    if value is None or not math.isfinite(value) or not metrics.get("best"):
        return UNSCORED
    return float(value if task.higher_is_better else -value)


def _validate(task: Task, module, state: TrainState, out_dir: Path, rank: int, engine: Engine,
              cfg: StageConfig | None = None, write: bool = True) -> dict:
    module.eval()
    with torch.no_grad(), engine.precision():
        m = task.validate(module)
    value = m.get(task.best_metric)
    keep = cfg.keep if cfg is not None else "best"
    if value is not None and math.isfinite(value):
        better = state.best is None or (value > state.best if task.higher_is_better else value < state.best)
        if better:
            state.best = value
            m["best"] = True
            if keep == "best" and write:
                task.save_adapter(module, Path(out_dir) / "adapter")  # every rank (ZeRO-3); rank 0 writes
                if rank == 0:
                    (Path(out_dir) / "adapter_step.json").write_text(json.dumps({"step": state.step, task.best_metric: value}))
    log.info("%s validation at step %d: %s", task.name, state.step, {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})
    return m
