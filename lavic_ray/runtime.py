"""Joining or starting Ray, the same way for every step.

The dashboard (and with it the state API) is on wherever Ray is started here: Ray Train's
controller asks it whether a run's workers are gone before it frees their resources, and
without it a long run logs "Failed to query Ray Train Controller actor state" about once a
second. It listens on 127.0.0.1 only, on 8265 unless another local Ray holds that port (a new local
instance then takes a free one: the console's log names it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray unless this process already is.

    Args:
        address: ``None`` joins the cluster ``RAY_ADDRESS`` (or a running ``ray start``) names, else
            starts a local one; ``"local"`` always starts a new local instance (never joins someone
            else's cluster on this machine); anything else is a cluster address.
        num_cpus: CPUs of a new local instance (default: all of them).
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "ignore_reinit_error": True}
    if address == "local":
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count(), dashboard_port=dashboard_port())
    elif address:
        kwargs["address"] = address
    ray.init(**kwargs)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})


def dashboard_port(preferred: int = 8265) -> int:
    """The dashboard port for a new local Ray: Ray's default when it is free, else any free port (another
    local Ray - a second quickstart, a user's own - holds 8265, and Ray would fail to start rather than move)."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port for the Ray dashboard on 127.0.0.1")


@contextlib.contextmanager
def ray_released():
    """Shut down, at the end of the block, a Ray connection made inside it (one the caller already had stays).

    Run it inside a console session: Ray's workers flush their last output at shutdown, and it must reach
    the session's log, not the terminal after a command's ``--json`` result."""
    had = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        yield
    finally:
        if not had and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def _threaded(fn, threads: int | None, args, kwargs):
    from lavic_ray.console import worker_logging

    worker_logging()
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(*args, **kwargs)


def remote_call(fn, *args, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None, **kwargs):
    """``fn(*args, **kwargs)`` as a Ray task when Ray is up - on a node with these resources, its torch threads
    set to its CPUs - else in this process. Steps that load a model run this way, so a job's driver never does."""
    import ray

    if not ray.is_initialized():
        return fn(*args, **kwargs)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus or None, resources=resources or None)(_threaded)
    threads = max(1, int(num_cpus)) if not num_gpus else None
    return ray.get(task.remote(fn, threads, args, kwargs))
