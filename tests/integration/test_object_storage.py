"""storage_root in an object store: a real S3 server (moto's, on 127.0.0.1) holds the runs, Ray Train writes its
checkpoints there, a run resumes from them after the local mirror is gone, and the Serve app loads the stage-2 run
by its s3:// URI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("moto", reason="the S3 server of these tests (dev extra)")
BUCKET = "lavic"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, a bucket, and the environment every process of the test uses to reach it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > end:
                server.kill()
                raise
            time.sleep(0.5)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "LAVIC_STORAGE_CACHE": str(tmp_path_factory.mktemp("mirror"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    yield SimpleNamespace(url=url, env=env, cache=env["LAVIC_STORAGE_CACHE"])
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.terminate()
    server.wait(timeout=10)


def _keys(prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _forget_the_mirror(s3) -> None:
    """As a new node (or a restarted pod) sees it: nothing local, everything in the store."""
    shutil.rmtree(s3.cache, ignore_errors=True)


def test_the_storage_helpers_round_trip(s3, tmp_path):
    from lavic_ray import storage

    root = f"s3://{BUCKET}/unit"
    assert storage.mirror(root) == storage.local(root) and storage.uri_of(storage.mirror(root) / "a") == root + "/a"
    d = storage.mirror(root) / "run"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "w.bin").write_bytes(b"\0" * 10)
    (d / "history.json").write_text("[]")
    storage.publish(d)
    assert sorted(_keys("unit/")) == ["unit/run/adapter/w.bin", "unit/run/history.json"]
    _forget_the_mirror(s3)
    assert storage.exists(d / "history.json") and not storage.exists(d / "nothing")
    assert (storage.fetch(d) / "adapter" / "w.bin").read_bytes() == b"\0" * 10
    assert storage.fetch(tmp_path) == tmp_path  # a POSIX path is left alone
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL"):
        storage.mirror("s3://b/x?endpoint_override=host")


def test_runs_live_in_the_store_resume_from_it_and_are_served_from_it(s3, tiny_dir, synth_root):
    import ray

    from lavic_ray import workflow
    from lavic_ray.config import load_config
    from lavic_ray.runtime import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    cfg = load_config(None, [
        f"storage_root=s3://{BUCKET}/runs", f"model.checkpoint={tiny_dir}", f"dataset.root={synth_root}",
        "dataset.domain=synthetic", "stage1.max_steps=2", "stage2.max_steps=2", "stage1.eval_every=2", "stage2.eval_every=2",
        "stage1.eval_limit=4", "stage2.eval_limit=4", "stage1.engine.kind=torch", "stage2.engine.kind=torch",
        "stage1.engine.micro_batch_size=2", "stage2.engine.micro_batch_size=2", "stage2.max_length=512", "eval.limit=4"])
    ensure_ray("local", num_cpus=2)  # its workers inherit the endpoint and the mirror's place
    try:
        cfg, art = workflow.resolve(cfg)
        workflow.stage1(cfg, art)
        workflow.embed(cfg, art, "distilled")
        keys = _keys("runs/")
        assert {"runs/stage1/adapter/adapter_config.json", "runs/stage1/history.json", "runs/items/distilled.parquet",
                "runs/stage1/config.yaml"} <= set(keys)
        assert any(k.startswith("runs/stage1/ray/run/checkpoint_") for k in keys), keys  # Ray Train wrote there

        _forget_the_mirror(s3)  # stage 2 reads the table from the store
        run = workflow.stage2(cfg, art, "lavic")
        assert run.stage2_dir.startswith(s3.cache)
        # an interrupted run: its checkpoints are in the store, its final adapter and history are not
        for k in _keys("runs/stage2/lavic/"):
            if k.startswith(("runs/stage2/lavic/adapter", "runs/stage2/lavic/history")):
                import boto3

                boto3.client("s3", endpoint_url=s3.url).delete_object(Bucket=BUCKET, Key=k)
        _forget_the_mirror(s3)
        longer = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"max_steps": 4})})
        workflow.stage2(longer, art, "lavic")
        from lavic_ray import storage

        history = json.loads(storage.fetch(art.stage2("lavic") / "history.json").read_text())
        assert [h["step"] for h in history if "valid_hr@1" in h] == [2, 4]
        resumed = json.loads(storage.fetch(art.stage2("lavic") / "resumed.json").read_text())
        assert resumed == {"resumed_at_steps": [2]}  # from the step-2 checkpoint in the store, not from scratch
        assert "runs/stage2/lavic/adapter/adapter_config.json" in _keys("runs/stage2/lavic/")
    finally:
        ray.shutdown()

    _forget_the_mirror(s3)  # the Serve app loads the run and its table by URI
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from lavic_ray.serve.app import build_app
    from lavic_ray.serve.reranker import Reranker
    from lavic_ray.serve.retriever import Retriever
    from lavic_ray.serve.schema import RecommendRequest, ServeArgs

    args = ServeArgs(stage2_dir=f"s3://{BUCKET}/runs/stage2/lavic", table=f"s3://{BUCKET}/runs/items/distilled.parquet",
                     catalog=str(synth_root), max_text_chars=4000)
    real = serve.get_replica_context

    def context():  # Ray 2.60's local testing mode sets no replica context, which @serve.batch reads
        try:
            return real()
        except RayServeException:
            return SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve, "get_replica_context", context)
        handle = serve.run(build_app(args), _local_testing_mode=True, name="lavic-s3-test")
        try:
            out = handle.recommend.remote(RecommendRequest(context="<submission>a teal mug?</submission>", k=3)).result()
        finally:
            for dep, method in ((Reranker, "_rerank_batch"), (Retriever, "_search_batch")):
                getattr(dep.func_or_class, method).set_max_batch_size.__self__._queue = None
    assert out.retrieved and len(out.items) == 3
