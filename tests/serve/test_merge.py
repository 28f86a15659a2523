"""The reranker merges its LoRA into the weights at replica start: the same scores, no adapter left."""

import pytest


def test_merged_lora_scores_like_the_adapter(served_run):
    import random

    import torch

    from lavic_ray.model.recommender import Recommender

    catalog = served_run["catalog_obj"]
    rng = random.Random(1)
    ids = sorted(catalog.ids())
    requests = []
    for _ in range(3):
        cands = rng.sample([i for i in ids if i != served_run["planted"]], 9) + [served_run["planted"]]
        rng.shuffle(cands)
        requests.append(("I want something for the living room", [(c, catalog[c].title) for c in cands]))
    plain = Recommender(served_run["stage2_dir"], served_run["table"])
    merged = Recommender(served_run["stage2_dir"], served_run["table"], merge_lora=True)
    assert not plain.describe()["lora_merged"] and merged.describe()["lora_merged"]
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    assert any("lora_" in n for n, _ in plain.model.named_parameters())
    a, b = plain.score(requests), merged.score(requests)
    assert torch.tensor(b) == pytest.approx(torch.tensor(a), abs=1e-3)
    for (_, cands), s in zip(requests, b):  # the planted answer still wins
        assert cands[max(range(len(s)), key=s.__getitem__)][0] == served_run["planted"]


def test_merging_is_for_inference_only(tiny_dir, tmp_path):
    from lavic_ray.config import LoraConfig, ModelConfig
    from lavic_ray.model.build import build_lavic

    with pytest.raises(ValueError, match="inference"):
        build_lavic(ModelConfig(checkpoint=str(tiny_dir)), adapter=tmp_path, merge_adapter=True, train_lora="llm",
                    lora=LoraConfig())


def test_the_health_check_is_cheap_and_runs_the_model_only_rarely(served_run, monkeypatch):
    """Serve asks every replica every 10 s: a 7B forward pass each time would cost a GPU's time under load. The check
    scores a request only when the replica answered none for DEEP_CHECK_EVERY_S."""
    from lavic_ray.serve import reranker as R

    rr = R.Reranker.func_or_class(served_run["stage2_dir"], served_run["table"], torch_threads=1)
    calls = []
    real = rr.core.score
    monkeypatch.setattr(rr.core, "score", lambda reqs: calls.append(reqs) or real(reqs))
    for _ in range(30):  # five minutes of Serve's checks on a fresh replica
        rr.check_health()
    assert calls == [] and rr.deep_checks == 0
    rr.last_answered -= R.DEEP_CHECK_EVERY_S  # idle for the whole period: the model answers one request now
    rr.check_health()
    rr.check_health()
    assert len(calls) == 1 and rr.deep_checks == 1
    monkeypatch.setattr(rr.core, "score", lambda reqs: (_ for _ in ()).throw(RuntimeError("CUDA error")))
    rr.last_answered -= R.DEEP_CHECK_EVERY_S
    import pytest

    with pytest.raises(RuntimeError, match="CUDA error"):  # a broken model fails the check: Serve replaces it
        rr.check_health()
