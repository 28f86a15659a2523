"""What run_ray hands Ray Train, checked without starting Ray: a worker group that cannot start must fail the
run after job.start_retries tries (Ray's own default retries forever, so a run that can never start hangs),
and the start timeout is the config's."""

import os

import pytest

from lavic_ray.config import load_config
from lavic_ray.train import run as run_mod


class _Captured(Exception):
    pass


@pytest.fixture()
def captured(monkeypatch):
    import ray.train.torch

    import lavic_ray.runtime

    seen: dict = {}

    class FakeTrainer:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            seen["env_timeout"] = os.environ.get(run_mod.WORKER_START_TIMEOUT_ENV)

        def fit(self):
            raise _Captured

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(lavic_ray.runtime, "ensure_ray", lambda *a, **k: None)
    monkeypatch.setenv(run_mod.WORKER_START_TIMEOUT_ENV, "0")  # recorded, so the run's value is undone after the test
    monkeypatch.delenv(run_mod.WORKER_START_TIMEOUT_ENV)
    return seen


def test_run_ray_bounds_worker_group_start_retries_and_sets_the_start_timeout(tmp_path, captured):
    cfg = load_config(None, ["job.start_retries=2", "job.worker_start_timeout_s=45.5", "job.max_failures=3"])
    with pytest.raises(_Captured):
        run_mod.run_ray("stage2", cfg, tmp_path / "out")
    fc = captured["run_config"].failure_config
    assert fc.controller_failure_limit == 2 and fc.max_failures == 3
    assert captured["env_timeout"] == "45.5"


def test_run_ray_defaults_are_finite_and_longer_than_rays(tmp_path, captured):
    cfg = load_config(None, [])
    with pytest.raises(_Captured):
        run_mod.run_ray("stage1", cfg, tmp_path / "out", max_failures=0)
    fc = captured["run_config"].failure_config
    assert fc.controller_failure_limit == cfg.job.start_retries >= 0 and fc.max_failures == 0
    assert float(captured["env_timeout"]) == cfg.job.worker_start_timeout_s > 60


def test_the_config_replaces_a_start_timeout_left_in_the_environment(monkeypatch):
    monkeypatch.setenv(run_mod.WORKER_START_TIMEOUT_ENV, "30")
    run_mod.set_worker_start_timeout(120)
    assert os.environ[run_mod.WORKER_START_TIMEOUT_ENV] == "120"


def test_a_worker_running_another_lavic_ray_than_the_driver_says_so(tmp_path, captured):
    """The driver sends its configuration schema's fingerprint; a worker whose code differs (an image that differs
    between head and worker groups, code changed under a running job) refuses in one sentence, not with pydantic's
    list of unknown keys."""
    from lavic_ray.errors import InvalidInput

    with pytest.raises(_Captured):
        run_mod.run_ray("stage1", load_config(None, []), tmp_path / "out")
    config = captured["train_loop_config"]
    assert config["schema"] == run_mod.schema_fingerprint()
    with pytest.raises(InvalidInput, match="run different versions"):
        run_mod._worker({**config, "schema": "0123456789ab"})
