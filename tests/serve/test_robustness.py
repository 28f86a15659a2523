"""One bad request never hurts another; bad input always gets a message saying what to fix (no Ray here)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lavic_ray.serve.app import RequestError, check_request, make_api
from lavic_ray.serve.batching import isolated, unwrap
from lavic_ray.serve.schema import MAX_LIST, RecommendRequest, ServeArgs

ARGS = ServeArgs(stage2_dir="x", catalog="y", max_candidates=12, max_text_chars=2000, max_exclude=50)
KNOWN = {f"B00000000{i}": f"title {i}" for i in range(10)}


def test_a_failing_request_fails_alone_in_its_batch():
    def score(batch):
        if any("poison" in r for r in batch):
            raise ValueError("tokenizer choked")
        return [len(r) for r in batch]

    out = isolated(score, ["good", "poison", "fine"], "test")
    assert out[0] == 4 and out[2] == 4 and isinstance(out[1], ValueError)
    assert unwrap(out[0]) == 4
    with pytest.raises(ValueError, match="choked"):
        unwrap(out[1])
    assert isolated(score, ["good", "fine"], "test") == [4, 4]


@pytest.mark.parametrize("body, fragment", [
    ({"context": "mug \ud800", "k": 2}, "lone surrogate"),
    ({"turns": [{"role": "user", "text": "a \udfff b"}]}, "lone surrogate"),
    ({"context": "x", "k": "3"}, "valid integer"),
    ({"context": "x", "k": True}, "valid integer"),
    ({"context": "x", "candidates": ["B000000001"] * 2}, "repeated: B000000001"),
    ({"context": "x", "exclude": [f"B{i:09d}" for i in range(MAX_LIST + 1)]}, f"at most {MAX_LIST} items"),
])
def test_the_schema_names_what_to_fix(body, fragment):
    with pytest.raises(ValidationError, match=fragment):
        RecommendRequest(**body)


@pytest.mark.parametrize("body, fragment", [
    ({"context": "<submission></submission>"}, "empty"),
    ({"context": "\x00\x00\x00"}, "empty"),
    ({"context": "<submission> </submission><comment>\x00</comment>"}, "empty"),
    ({"context": "x", "exclude": list(KNOWN)}, "every item of the catalog is excluded"),
    ({"context": "x", "candidates": list(KNOWN)[:3], "exclude": list(KNOWN)[:3]}, "every candidate is excluded"),
    ({"context": "x", "exclude": [f"B{i:09d}" for i in range(51)]}, "limit is 50"),
])
def test_requests_that_cannot_be_answered_are_422(body, fragment):
    with pytest.raises(RequestError, match=fragment) as e:
        check_request(RecommendRequest(**body), ARGS, KNOWN)
    assert e.value.status == 422


def test_repeated_id_check_is_linear_and_lists_are_capped():
    ids = [f"B{i:09d}" for i in range(MAX_LIST)]
    RecommendRequest(context="x", candidates=ids)  # a thousand distinct IDs: checked with one count each
    with pytest.raises(ValidationError, match="at most"):
        RecommendRequest(context="x", candidates=ids * 30)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["context", "turns", "k", "candidates", "exclude", "extra"]), json_values, max_size=5))
def test_any_json_body_is_a_request_or_a_validation_error_never_a_crash(body):
    try:
        req = RecommendRequest.model_validate(body)
    except ValidationError as e:
        assert e.errors() and all(err["msg"] for err in e.errors())
        return
    try:
        check_request(req, ARGS, KNOWN)
    except RequestError as e:
        assert e.status == 422 and e.message


def _client(token_env=None, max_bytes=2048):
    api = make_api(max_bytes, token_env)

    @api.post("/echo")
    async def echo(body: RecommendRequest) -> dict:
        return {"k": body.k}

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("a bug")

    return TestClient(api, raise_server_exceptions=False)


def test_body_limit_token_and_error_shapes(monkeypatch):
    c = _client()
    r = c.post("/echo", content=json.dumps({"context": "x" * 5000}), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 2048" in r.json()["error"]
    r = c.post("/echo", content=b'{"context": "x", "k": 3,', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = c.post("/echo", content=b'\xff\xfe{"context": 1}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["error"]
    r = c.get("/boom")
    assert r.status_code == 500 and "other requests are not affected" in r.json()["error"]
    monkeypatch.setenv("LAVIC_TEST_TOKEN", "s3cret")
    c = _client("LAVIC_TEST_TOKEN")
    assert c.get("/healthz").status_code == 200  # probes stay open
    r = c.post("/echo", json={"context": "x", "k": 2})
    assert r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert c.post("/echo", json={"context": "x", "k": 2}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/echo", json={"context": "x", "k": 2}, headers={"Authorization": "Bearer s3cret"}).json() == {"k": 2}


def test_openapi_documents_the_error_shape():
    from lavic_ray.serve.app import make_ingress

    schema = make_ingress(ARGS).func_or_class.fastapi_app.openapi()
    responses = schema["paths"]["/recommend"]["post"]["responses"]
    assert {"400", "401", "413", "422", "503"} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
