"""The stage-1 probe's verdict: which decisive attributes the 5 vectors do not carry."""

from lavic_ray.eval.probe import near_chance, score_descriptions
from lavic_ray.quickstart import _blind_text


def result(items=40, **acc):
    return {"items": items, "attributes": list(acc), **{f"{a}_accuracy": v for a, (v, _) in acc.items()},
            **{f"{a}_chance": c for a, (_, c) in acc.items()}}


def test_near_chance_is_within_two_standard_errors_of_a_guess():
    # motif: 6 values, 40 items -> a guess scores 0.167 +- 0.059, so below 0.285 is no better than a guess
    r = result(motif=(0.225, 1 / 6), build=(0.825, 1 / 3))
    assert near_chance(r) == {"motif": (0.225, 1 / 6)}
    assert near_chance(result(motif=(0.30, 1 / 6))) == {}
    assert near_chance(result(items=400, motif=(0.225, 1 / 6))) == {}  # 400 items: 0.225 is above a guess
    assert near_chance({"items": 40, "attributes": ["colour"], "colour_accuracy": 0.1}) == {}  # no chance recorded


def test_the_report_and_console_name_what_the_vectors_lack():
    probe = {"before": result(motif=(0.2, 1 / 6), build=(0.5, 1 / 3)), "after": result(motif=(0.175, 1 / 6), build=(0.825, 1 / 3))}
    text = _blind_text(probe)
    assert "name the motif no better than a guess (motif 0.175, chance 0.167; 40 items)" in text
    assert "build" not in text
    probe["after"] = result(motif=(0.6, 1 / 6), build=(0.825, 1 / 3))
    assert _blind_text(probe) is None and _blind_text({}) is None


def test_the_teacher_probe_tells_an_attribute_the_model_cannot_see_from_one_the_vectors_lost():
    probe = {"after": result(motif=(0.175, 1 / 6), build=(0.3, 1 / 3)), "teacher": result(motif=(0.2, 1 / 6), build=(0.9, 1 / 3))}
    text = _blind_text(probe)
    # the teacher sees the build: the vectors lost it
    assert "name the build no better than a guess (build 0.300, chance 0.333; 40 items) (from all its image tokens the " \
           "model names it: build 0.900)" in text
    assert "cannot name the motif even from all its image tokens (motif 0.200, chance 0.167; 40 items)" in text


def test_score_descriptions_reads_the_first_value_named():
    truth = {"a": {"motif": "star"}, "b": {"motif": "moon"}}
    vocab = {"motif": {"star": ["star"], "moon": ["moon", "crescent"]}}
    r = score_descriptions(["a", "b"], ["A white star, not a moon.", "A white star on a crescent."], truth, vocab)
    assert r["motif_accuracy"] == 0.5 and r["motif_chance"] == 0.5 and r["items"] == 2
    assert r["examples"][1] == {"item_id": "b", "truth": "moon", "generated": "A white star on a crescent."}
