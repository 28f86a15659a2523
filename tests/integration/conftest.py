"""The integration tier's local Ray: one instance per test module that runs Ray work from this process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs and the dashboard (Ray Train's state API needs it), shared by a module's tests (each
    start costs seconds of CPU on a 2-core machine) and shut down after them: an idle Ray left running takes CPU from
    the tests after it (the rehearsal's cluster, the quickstart's own Ray)."""
    import ray

    from lavic_ray.runtime import ensure_ray

    # "local": never join another Ray of this machine (a `ray start` head another test started)
    ensure_ray("local", num_cpus=2)
    yield
    ray.shutdown()
