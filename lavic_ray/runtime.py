"""Joining or starting Ray, the same way for every step.

The dashboard (and with it the state API) is on wherever Ray is started here: Ray Train's
controller asks it whether a run's workers are gone before it frees their resources, and
without it a long run logs "Failed to query Ray Train Controller actor state" about once a
second. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os

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
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count())
    elif address:
        kwargs["address"] = address
    ray.init(**kwargs)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
