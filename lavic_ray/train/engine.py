"""The training engine: DeepSpeed, or plain torch where DeepSpeed is absent.

DeepSpeed runs here on the CPU accelerator with the gloo backend and, unchanged,
on GPUs with NCCL and bf16. The torch engine (AdamW, DDP when distributed) exists
for machines without DeepSpeed - such as a lone GPU box - and is what a single
process falls back to only when asked (``engine.kind: torch``).

Both engines count *optimizer* steps (after gradient accumulation) and save the
full training state so a restarted run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.distributed as dist

from lavic_ray.config import EngineConfig
from lavic_ray.errors import InvalidInput
from lavic_ray.hardware import collective_backend, cuda_available

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_group(backend: str | None = None) -> None:
    """Initialise torch.distributed for a plain single-process run when nothing has.

    Ray Train sets up the process group itself; a plain ``python`` launch gets a
    world of one on 127.0.0.1 (DeepSpeed needs a process group either way).
    """
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = backend or collective_backend(cuda_available())
    dist.init_process_group(backend=backend)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: keys of a user's DeepSpeed JSON that the loop owns (its batching, its learning-rate schedule): set them in the config
LOOP_OWNED = {"train_micro_batch_size_per_gpu": "engine.micro_batch_size", "gradient_accumulation_steps":
              "engine.grad_accumulation", "train_batch_size": "engine.micro_batch_size x grad_accumulation x workers",
              "scheduler": "stage*.warmup_steps / lr_decay"}


def merge_deepspeed_json(computed: dict, path: str | Path) -> dict:
    """A user's DeepSpeed JSON (the habit of LLaMA-Factory and the HF Trainer) over the computed config: its values
    replace the computed ones key by key, nested sections merged, and ``"auto"`` keeps the computed value. The keys
    the loop owns (:data:`LOOP_OWNED`) may only be ``"auto"`` or equal to the computed value."""
    import json

    path = Path(path)
    try:
        user = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"engine.deepspeed_config: {path} does not exist") from None
    except ValueError as e:
        raise InvalidInput(f"engine.deepspeed_config: {path} is not JSON ({e})") from None
    if not isinstance(user, dict):
        raise InvalidInput(f"engine.deepspeed_config: {path} must hold a JSON object")
    for key, setting in LOOP_OWNED.items():
        if key in user and user[key] != "auto" and user[key] != computed.get(key):
            raise InvalidInput(f"engine.deepspeed_config: {path} sets {key}={user[key]!r}; lavic-ray's loop owns it "
                               f"(set {setting}), so give \"auto\" or leave it out")

    def merge(base, extra):
        out = dict(base)
        for k, v in extra.items():
            if v == "auto":
                continue
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(computed, user)


def deepspeed_config(cfg: EngineConfig, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """The DeepSpeed JSON config for an :class:`EngineConfig` (also written beside checkpoints), with
    ``engine.deepspeed_config`` merged over it (:func:`merge_deepspeed_json`)."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda_available()}
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            # torch's Adam avoids a JIT C++ build on CPU; with offload, DeepSpeedCPUAdam is used instead
            "params": {"lr": lr, "weight_decay": weight_decay, **({} if cfg.offload_optimizer else {"torch_adam": True})},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return merge_deepspeed_json(ds, cfg.deepspeed_config) if cfg.deepspeed_config else ds


def warmup_factor(step: int, warmup_steps: int, total_steps: int | None = None, decay: str = "constant") -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based): linear from 1/warmup to 1, then
    ``constant``, or decaying to 0 at ``total_steps`` (``linear``, ``cosine``).

    Both engines use this one schedule (DeepSpeed's own WarmupLR defaults to a log ramp that is
    already at 85% of the peak after 10 of 15 warmup steps, and starts at 0).
    """
    w = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if decay == "constant" or not total_steps:
        return w
    progress = min(1.0, max(0.0, (step + 1 - warmup_steps) / max(1, total_steps - warmup_steps)))
    return w * (1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_scheduler(warmup_steps: int, total_steps: int | None = None, decay: str = "constant"):
    """A callable that makes the schedule's ``LambdaLR`` for an optimizer (DeepSpeed's ``lr_scheduler`` argument),
    or None when the learning rate stays constant."""
    if not warmup_steps and (decay == "constant" or not total_steps):
        return None
    f = functools.partial(warmup_factor, warmup_steps=warmup_steps, total_steps=total_steps, decay=decay)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, f)


class Engine(ABC):
    """Uniform surface over DeepSpeed and torch: forward, backward, step, save, load.

    ``bf16-mixed`` runs the forward under bf16 autocast with fp32 weights (either engine; the
    backward follows the forward's dtypes); ``bf16`` with the torch engine does the same, while
    DeepSpeed keeps its own bf16 mode.
    """

    def __init__(self, module: torch.nn.Module, cfg: EngineConfig):
        self.cfg = cfg
        self.module = module
        self.micro_steps = 0
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters (did LoRA attach to any module?)")
        self.autocast = cfg.precision == "bf16-mixed"
        self.autocast_dtype = torch.bfloat16

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def precision(self):
        """The context the forward runs in: bf16 autocast where the precision asks for it, else nothing."""
        if self.autocast:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def __call__(self, *args, **kwargs):
        with self.precision():
            return self.wrapped(*args, **kwargs)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate a micro-batch's loss (accumulating over micro-batches)."""

    @abstractmethod
    def step(self) -> bool:
        """Advance one micro-step; True when an optimizer step happened."""

    @abstractmethod
    def save(self, directory: Path, client_state: dict) -> None:
        """Save the training state (every rank calls this)."""

    @abstractmethod
    def load(self, directory: Path) -> dict:
        """Restore the training state saved by :meth:`save`; returns its client state."""


class DeepSpeedEngine(Engine):
    """DeepSpeed: ZeRO, bf16, optimizer offload; the CPU accelerator with gloo here, NCCL on GPUs."""

    def __init__(self, module: torch.nn.Module, cfg: EngineConfig, lr: float, weight_decay: float, warmup_steps: int = 0,
                 total_steps: int | None = None, decay: str = "constant"):
        super().__init__(module, cfg)
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda_available() else "cpu")
        try:
            import deepspeed
        except ImportError as e:
            raise InvalidInput("engine.kind=deepspeed needs DeepSpeed: pip install 'lavic-ray[deepspeed]', "
                               "or set stage*.engine.kind=torch") from e
        ensure_process_group()
        self.ds_config = deepspeed_config(cfg, lr, weight_decay, warmup_steps)
        self.wrapped, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, model_parameters=self.params, config=self.ds_config, dist_init_required=False,
            lr_scheduler=warmup_scheduler(warmup_steps, total_steps, decay),
        )

    def backward(self, loss):
        self.wrapped.backward(loss)

    def step(self):
        self.micro_steps += 1
        boundary = self.wrapped.is_gradient_accumulation_boundary()
        self.wrapped.step()
        return boundary

    def save(self, directory, client_state):
        # frozen base weights are the checkpoint's own, not training state: at 7B they would be 14 GB a save
        self.wrapped.save_checkpoint(str(Path(directory) / "engine"), tag="state", client_state=client_state,
                                     exclude_frozen_parameters=True)

    def load(self, directory):
        path, client_state = self.wrapped.load_checkpoint(str(Path(directory) / "engine"), tag="state", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {Path(directory) / 'engine'}")
        return client_state or {}


class TorchEngine(Engine):
    """Plain torch (AdamW, DDP when distributed): for machines without DeepSpeed, such as a lone GPU box."""

    def __init__(self, module: torch.nn.Module, cfg: EngineConfig, lr: float, weight_decay: float, warmup_steps: int = 0,
                 total_steps: int | None = None, decay: str = "constant"):
        super().__init__(module, cfg)
        if cfg.zero_stage or cfg.offload_optimizer:
            log.info("engine.kind=torch ignores zero_stage/offload_optimizer")
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        make = warmup_scheduler(warmup_steps, total_steps, decay)
        self.scheduler = make(self.optimizer) if make else None
        _, size = world()
        self.wrapped = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True) if size > 1 else module
        self.autocast = cfg.precision in ("bf16-mixed", "bf16", "fp16")
        self.autocast_dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
        # fp16 gradients underflow without loss scaling
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None

    def backward(self, loss):
        loss = loss / self.cfg.grad_accumulation
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self):
        self.micro_steps += 1
        if self.micro_steps % self.cfg.grad_accumulation:
            return False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, directory, client_state):
        rank, _ = world()
        if rank != 0:
            return
        directory = Path(directory)
        (directory / "engine").mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        torch.save({"params": trainable, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                    "micro_steps": self.micro_steps, "client_state": client_state},
                   directory / "engine" / "state.pt")

    def load(self, directory):
        state = torch.load(Path(directory) / "engine" / "state.pt", map_location="cpu", weights_only=False)
        named = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, t in state["params"].items():
                named[n].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]
        return state["client_state"]


ENGINES: dict[str, type[Engine]] = {"deepspeed": DeepSpeedEngine, "torch": TorchEngine}


def make_engine(module: torch.nn.Module, cfg: EngineConfig, lr: float, weight_decay: float, warmup_steps: int = 0,
                total_steps: int | None = None, decay: str = "constant") -> Engine:
    """The engine ``cfg.kind`` names, over ``module``'s trainable parameters (learning rate: warmup, then
    ``decay`` to 0 at ``total_steps``, or constant). ``precision: auto`` is made concrete here, for the device
    ``module`` is on (:func:`lavic_ray.model.precision.resolve_precision`)."""
    from lavic_ray.model.precision import resolve_precision

    concrete = resolve_precision(cfg.precision, next(module.parameters()).device)  # also warns of emulated bf16
    if concrete != cfg.precision:
        cfg = cfg.model_copy(update={"precision": concrete})
    return ENGINES[cfg.kind](module, cfg, lr, weight_decay, warmup_steps, total_steps, decay)
