"""The whole application (ingress -> retriever -> reranker) in Serve's local testing mode: no cluster, no HTTP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import serve
from ray.serve.exceptions import RayServeException

from lavic_ray.serve.app import RequestError, build_app
from lavic_ray.serve.reranker import Reranker
from lavic_ray.serve.retriever import Retriever
from lavic_ray.serve.schema import RecommendRequest


@pytest.fixture(scope="module")
def handle(serve_args):
    # Ray 2.60's local testing mode sets no replica context, and @serve.batch reads one
    # (max_ongoing_requests, for a warning) when its queue starts: give it the deployment's.
    real = serve.get_replica_context

    def context():
        try:
            return real()
        except RayServeException:
            return SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve, "get_replica_context", context)
        yield serve.run(build_app(serve_args), _local_testing_mode=True, name="lavic-local-test")
    # @serve.batch keeps one queue per decorated method, process-wide; local mode started
    # them here, and a class holding a live queue cannot be pickled for a real deployment.
    for dep, method in ((Reranker, "_rerank_batch"), (Retriever, "_search_batch")):
        getattr(dep.func_or_class, method).set_max_batch_size.__self__._queue = None


def _ask(handle, **body):
    return handle.recommend.remote(RecommendRequest(**body)).result()


def test_planted_ground_truth_comes_back_first_from_given_candidates(handle, served_run):
    catalog, planted = served_run["catalog_obj"], served_run["planted"]
    others = [i for i in sorted(catalog.ids()) if i != planted][:9]
    cands = others[:6] + [planted] + others[6:]
    out = _ask(handle, context="<submission>something for my desk</submission>", k=3, candidates=cands)
    assert not out.retrieved and out.candidates == 10 and len(out.items) == 3
    assert out.items[0].item_id == planted and out.items[0].title == catalog[planted].title
    assert [it.rank for it in out.items] == [1, 2, 3]
    assert out.items[0].score >= out.items[1].score >= out.items[2].score
    assert out.formulation == "listwise" and out.timings_ms["rerank"] > 0


def test_retrieval_then_rerank_finds_the_planted_item_by_its_title(handle, served_run):
    catalog, planted = served_run["catalog_obj"], served_run["planted"]
    out = _ask(handle, turns=[{"role": "user", "text": catalog[planted].title}], k=5)
    assert out.retrieved and out.candidates == 10
    assert out.items[0].item_id == planted


def test_multi_turn_is_stateless_and_exclude_hides_items_already_shown(handle, served_run):
    catalog, planted = served_run["catalog_obj"], served_run["planted"]
    first = _ask(handle, turns=[{"role": "user", "text": catalog[planted].title}], k=3)
    shown = [it.item_id for it in first.items]
    # turn 2: the client resends the conversation so far, and what it already showed
    second = _ask(handle, k=3, exclude=shown, turns=[
        {"role": "user", "text": catalog[planted].title},
        {"role": "assistant", "text": "How about " + ", ".join(catalog[i].title for i in shown) + "?"},
        {"role": "user", "text": "Not those. Something else like it."},
    ])
    assert not set(shown) & {it.item_id for it in second.items}
    assert len(second.items) == 3
    # the same request twice gives the same answer: nothing is kept between calls
    again = _ask(handle, turns=[{"role": "user", "text": catalog[planted].title}], k=3)
    assert [it.item_id for it in again.items] == shown


@pytest.mark.parametrize("body, fragment", [
    ({"context": "   "}, "empty"),
    ({"turns": []}, "empty"),
    ({"context": "x", "turns": [{"role": "user", "text": "y"}]}, "not both"),
    ({}, "neither"),
    ({"context": "x" * 2001}, "characters"),
    ({"context": "x", "candidates": ["NOPE000000"]}, "unknown item ID"),
    ({"context": "x", "k": 11}, "k <= 10"),
])
def test_client_mistakes_raise_request_errors(handle, body, fragment):
    with pytest.raises(RequestError, match=fragment) as e:
        _ask(handle, **body)
    assert e.value.status == 422


def test_too_many_candidates_and_k_over_the_list(handle, served_run):
    ids = sorted(served_run["catalog_obj"].ids())
    with pytest.raises(RequestError, match="limit is 12"):
        _ask(handle, context="x", candidates=ids[:13])
    with pytest.raises(RequestError, match="only 2 candidates"):
        _ask(handle, context="x", candidates=ids[:2], k=3)


def test_healthz_and_info(handle):
    assert handle.healthz.remote().result()["status"] == "ok"
    info = handle.info.remote().result()
    assert info["reranker"]["formulation"] == "listwise" and info["reranker"]["table_items"] == 192
    assert info["reranker"]["prefix_sharing"] == "auto (packed)"  # what auto stands for on this model

