"""The serving application on a real local Ray: HTTP on 127.0.0.1, every client error, a killed replica."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(serve_args):
    import ray
    from ray import serve

    from lavic_ray.serve.app import compose_app

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {"Reranker": {"ray_actor_options": {"num_cpus": 0.5}}, "Retriever": {"ray_actor_options": {"num_cpus": 0.2}}}
    serve.run(compose_app(serve_args, options), name="lavic", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    yield base
    serve.shutdown()
    ray.shutdown()


def _post(url, body=None, data=None):
    if data is not None:
        return requests.post(f"{url}/recommend", data=data, headers={"content-type": "application/json"}, timeout=60)
    return requests.post(f"{url}/recommend", json=body, timeout=60)


def test_round_trip_planted_item_first(url, served_run):
    catalog, planted = served_run["catalog_obj"], served_run["planted"]
    others = [i for i in sorted(catalog.ids()) if i != planted][:9]
    r = _post(url, {"turns": [{"role": "user", "text": "anything for my shelf?"}], "k": 2,
                    "candidates": others[:3] + [planted] + others[3:]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["items"][0]["item_id"] == planted and body["items"][0]["title"] == catalog[planted].title
    assert body["candidates"] == 10 and body["retrieved"] is False
    r = _post(url, {"context": f"<submission>{catalog[planted].title}</submission>", "k": 3})
    assert r.status_code == 200 and r.json()["items"][0]["item_id"] == planted and r.json()["retrieved"]


def test_healthz_and_openapi(url):
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/recommend" in spec["paths"] and "RecommendRequest" in spec["components"]["schemas"]
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200


@pytest.mark.parametrize("body, data, status, fragment", [
    (None, '{"context": "x", "k": 3,', 400, "malformed JSON"),
    (None, "not json at all", 400, "malformed JSON"),
    ({"context": ""}, None, 422, "empty"),
    ({"turns": [{"role": "user", "text": "  "}]}, None, 422, "empty"),
    ({"turns": [{"role": "robot", "text": "hi"}]}, None, 422, "turns.0.role"),
    ({"context": "x", "candidates": ["NOPE000000", "B0NOTREAL0"]}, None, 422, "unknown item ID(s): NOPE000000, B0NOTREAL0"),
    ({"context": "x", "exclude": ["NOPE000000"]}, None, 422, "unknown item ID"),
    ({"context": "x", "candidates": "B000000001"}, None, 422, "candidates"),
    ({"context": "x" * 2001}, None, 422, "limit is 2000"),
    ({"context": "x", "k": 0}, None, 422, "k: Input should be greater than or equal to 1"),
    ({"context": "x", "k": 11}, None, 422, "k <= 10"),
    ({"context": "x", "colour": "red"}, None, 422, "colour: Extra inputs are not permitted"),
])
def test_client_errors_are_4xx_with_a_message(url, body, data, status, fragment):
    r = _post(url, body, data)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_candidate_list_errors(url, served_run):
    ids = sorted(served_run["catalog_obj"].ids())
    r = _post(url, {"context": "x", "candidates": ids[:13]})
    assert r.status_code == 422 and "limit is 12" in r.json()["error"]
    r = _post(url, {"context": "x", "candidates": [ids[0], ids[0]]})
    assert r.status_code == 422 and "repeated" in r.json()["error"]


def test_poisoned_requests_fail_alone_among_concurrent_good_ones(url, served_run):
    """Each round sends 6 good requests and 2 poisoned ones (a lone surrogate, a turn of NULs only) at once through
    the real HTTP stack, so they share batches: every good one is answered, every poisoned one is a 422."""
    from concurrent.futures import ThreadPoolExecutor

    catalog = served_run["catalog_obj"]
    good = {"context": f"<submission>{catalog[served_run['planted']].title}</submission>", "k": 2}
    poisoned = ['{"context": "mug \\ud800", "k": 2}', '{"turns": [{"role": "user", "text": "\\u0000\\u0000"}], "k": 2}']
    with ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            futures = [pool.submit(_post, url, good) for _ in range(3)]
            futures += [pool.submit(_post, url, None, p) for p in poisoned]
            futures += [pool.submit(_post, url, good) for _ in range(3)]
            codes = [f.result().status_code for f in futures]
            assert codes == [200] * 3 + [422, 422] + [200] * 3, codes


def test_a_body_over_the_limit_is_413_before_it_is_parsed(url):
    r = _post(url, None, '{"context": "' + "x" * (1 << 20) + '"}')
    assert r.status_code == 413 and "limit is" in r.json()["error"]


def test_killed_reranker_replica_recovers_under_load(url, served_run):
    import ray

    catalog = served_run["catalog_obj"]
    body = {"context": f"<submission>{catalog[served_run['planted']].title}</submission>", "k": 3}
    results: list[int] = []
    stop = time.monotonic() + 40

    def client():
        while time.monotonic() < stop and len(results) < 400:
            try:
                results.append(_post(url, body).status_code)
            except requests.RequestException:
                results.append(-1)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    before = len(results)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "Reranker" in a["name"]]
    assert names, "no reranker replica actor found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    for t in threads:
        t.join()
    assert before > 0 and len(results) > before
    # the service recovered: the last requests all succeeded
    assert results[-8:] == [200] * 8, results[-20:]
    after = requests.post(f"{url}/recommend", json=body, timeout=60)
    assert after.status_code == 200


def test_build_app_is_a_serve_config_builder(serve_args):
    """`serve run`/`serve deploy` call the import path with the config's args dict: Serve accepts
    only a one-parameter builder, and validates the dict into its annotated type."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from lavic_ray.serve.app import build_app

    app = call_user_app_builder_with_args_if_necessary(build_app, serve_args.model_dump(mode="json"))
    assert app is not None
    with pytest.raises(Exception):
        call_user_app_builder_with_args_if_necessary(build_app, {"stage2_dir": "/nonexistent"})
