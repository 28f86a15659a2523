"""Which numeric precision a device runs fast: ``engine.precision: auto`` resolves here.

bf16 autocast pays only where bf16 matmuls are native: CPUs with AVX-512 BF16 or AMX (1.3-1.4x
over fp32 in the quickstart's stages, bench/RESULTS.md) and GPUs that support bf16. On a CPU
without them PyTorch emulates bf16 matmuls: on an AVX2-only AMD EPYC (2026-12-02) a training step of
the small model's LLM ran 20x slower than in fp32 (bench/RESULTS.md) and a quickstart stage-1 step took
~127 s against 3.5 s in fp32; on an AVX-512 Xeon without BF16 (2026-12-07) a 512x2048x2048 matmul took
148 ms in bf16 against 34 ms in fp32. ``auto`` therefore picks
``bf16-mixed`` there and ``fp32`` elsewhere, on the machine that runs the step.
"""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


def bf16_is_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bf16 matmuls natively (a CPU with AVX-512 BF16 or AMX; a GPU with bf16 support)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device.type == "cpu" and _cpu_has_native_bf16()


#: CPU flags (Linux's /proc/cpuinfo) of native bf16 matmuls: AVX-512 BF16, AMX, Arm's BF16 extension
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpu_flags() -> set[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (None where there is none: another OS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def _cpu_has_native_bf16() -> bool:
    """bf16 matmuls in hardware: the CPU has AVX-512 BF16, AMX or Arm's BF16 (its flags), and oneDNN may use them
    (it says no when held to a lower ISA, e.g. ONEDNN_MAX_CPU_ISA=AVX2). oneDNN alone is not enough: it also says yes
    on AVX-512 CPUs without BF16, where it emulates bf16 (a matmul measured 4.4x slower than fp32 on such a Xeon)."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = _cpu_flags()
    return onednn and (flags is None or any(f in flags for f in NATIVE_BF16_FLAGS))


def cpu_summary() -> str:
    """This machine's CPU as the figures it produced should name it, e.g. ``Intel(R) Xeon(R) Processor, 2 cores,
    AVX512, bf16 native``: the model (from ``/proc/cpuinfo`` where there is one), the cores this process may use,
    the vector ISA PyTorch dispatches to, and whether bf16 matmuls are native (what ``auto`` decides on)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown ISA"
    return f"{name}, {cores} cores, {isa}, bf16 {'native' if _cpu_has_native_bf16() else 'emulated'}"


def concrete_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``precision`` as configured, with ``auto`` made concrete for ``device``: ``bf16-mixed`` where bf16 is native,
    else ``fp32``. Quiet: :func:`resolve_precision` is this plus what the log should say."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if bf16_is_native(device) else "fp32"


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """:func:`concrete_precision`, logging what ``auto`` became and warning of a bf16 setting on a CPU that would
    emulate it."""
    concrete = concrete_precision(precision, device)
    if precision != "auto":
        if precision in ("bf16", "bf16-mixed") and torch.device(device).type == "cpu" and not bf16_is_native(device):
            log.warning("engine.precision %s on a CPU without native bf16 (no AVX-512 BF16 or AMX): its matmuls are "
                        "emulated, ~20x slower than fp32 here (bench/RESULTS.md); engine.precision=auto picks fp32 "
                        "on such a CPU", precision)
        return concrete
    log.info("engine.precision auto -> %s on %s (bf16 matmuls %s there)", concrete, torch.device(device).type,
             "native" if concrete == "bf16-mixed" else "emulated: fp32 is faster")
    return concrete
