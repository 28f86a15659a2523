"""Where model code runs: the torch device, the collective backend, and the rule that a job's driver loads no model.

One switch, ``LAVIC_FORCE_CPU=1``, runs model code on the CPU wherever a config asks for CUDA - the 7B
presets' "GPU" steps inside the logical-GPU workers of a laptop rehearsal of a cluster
(tests/integration/test_rehearsal.py), with gloo instead of NCCL. Without it, a step that asks for CUDA where
there is none fails with a clear error instead of running on the CPU unnoticed.
"""

from __future__ import annotations

import os

from lavic_ray.errors import InvalidInput

#: The switch: model code on the CPU even where the config (or Ray) asks for GPUs.
FORCE_CPU_ENV = "LAVIC_FORCE_CPU"

_driver = False


def force_cpu() -> bool:
    """True when ``LAVIC_FORCE_CPU`` is set to a true value (1, true, yes)."""
    return os.environ.get(FORCE_CPU_ENV, "").strip().lower() in ("1", "true", "yes")


def cuda_available() -> bool:
    """CUDA is there and not switched off."""
    if force_cpu():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | None) -> str | None:
    """The torch device to use for a requested one: ``cuda``/``cuda:N`` becomes ``cpu`` under the switch, and is
    refused where no GPU is visible; anything else is kept (None: the caller's CPU default)."""
    if device is None or not str(device).startswith("cuda"):
        return device
    if force_cpu():
        return "cpu"
    if not cuda_available():
        raise InvalidInput(f"device {device!r} asked for, but this process sees no GPU (torch.cuda.is_available() "
                           f"is False): run the step where GPUs are (use_gpu / gpus_per_actor), or ask for cpu")
    return device


def collective_backend(use_gpu: bool) -> str:
    """torch.distributed backend of a run, from its config (a driver on a CPU head starts workers on GPU nodes):
    nccl for GPU runs, gloo for CPU runs and under the switch."""
    return "nccl" if use_gpu and not force_cpu() else "gloo"


def mark_driver() -> None:
    """This process is a job's driver: it schedules work and loads no model (DESIGN: model work runs where the
    accelerators are). :func:`check_not_driver` then refuses a model load here."""
    global _driver
    _driver = True


def check_not_driver(what: str) -> None:
    """Refuse ``what`` (a model load) in a job's driver: it would run on the head, which has no accelerator."""
    if _driver:
        raise RuntimeError(f"{what} in the job's driver: every model step runs as a Ray task or actor with the "
                           f"resources its config section asks for (a bug in lavic-ray)")
