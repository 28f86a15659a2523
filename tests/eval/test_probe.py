"""The stage-1 probe's verdict: which decisive attributes the 5 vectors do not carry; without attribute truth, which
of the descriptions' words."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from lavic_ray.eval.probe import (
    distinctive_words,
    names_word,
    near_chance,
    score_descriptions,
    word_probe_items,
    word_readout,
    words_of,
)
from lavic_ray.diagnosis import blind_text as _blind_text
from lavic_ray.diagnosis import carried_text as _carried_text
from lavic_ray.diagnosis import words_text as _words_text
from lavic_ray.report import probe_lines as _probe_lines


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


def test_a_run_whose_vectors_carry_every_attribute_puts_the_failure_on_stage_2():
    """Measured on an AVX2-only CPU: the vectors named colour 0.975 and pattern 0.700 and stage 2 still did not learn."""
    probe = {"after": result(colour=(0.975, 1 / 8), pattern=(0.7, 1 / 4))}
    text = _carried_text(probe)
    assert "name every decisive attribute (colour 0.975, chance 0.125, pattern 0.700, chance 0.250; 40 items)" in text
    assert "what did not learn is stage 2" in text and _blind_text(probe) is None
    # an attribute the vectors lack is the other message's; no probe, no claim
    assert _carried_text({"after": result(colour=(0.975, 1 / 8), pattern=(0.25, 1 / 4))}) is None
    assert _carried_text({}) is None and _carried_text({"words": {}}) is None


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


def test_words_of_keeps_content_words_only():
    assert words_of("A slim, Standard-width bottle; it's on the front.") == {"slim", "standard-width", "bottle", "front"}


def test_distinctive_words_sets_descriptions_apart_and_are_asked_for():
    descriptions = ([f"A studio photo of a {c} bottle with a star" for c in ("red", "red", "red", "blue", "blue", "blue")]
                    + ["The image shows a green bottle with a moon"] * 4)
    # in 3 to 5 of the 10: 'red', 'blue' (3), 'green', 'moon', 'image', 'shows' (4); 'bottle' (10), 'star', 'studio' (6) are not
    assert distinctive_words(descriptions) == ["blue", "green", "image", "moon", "red", "shows"]
    requests = ["I want a red one", "red please", "a red bottle", "blue?", "anything with a moon", "a moon", "moon!"]
    # a word no request uses (the phrasing: 'image', 'shows'), or fewer than 3 do ('blue'), decides nothing
    assert distinctive_words(descriptions, requests) == ["moon", "red"]


def test_word_readout_counts_hits_and_false_alarms():
    truth = ["red star", "red moon", "blue star", "blue moon"]
    said = ["red star", "blue star", "red star", "blue moon"]
    r = word_readout(truth, said, ["red", "blue", "star", "moon", "green"], min_items=2)
    # red: in 2 true texts, named for 1 of them and for 1 of the other 2
    assert r == {"red": [2, 1, 2, 1], "blue": [2, 1, 2, 1], "star": [2, 2, 2, 1], "moon": [2, 1, 2, 0]}
    assert not names_word(r["red"]) and names_word(r["moon"]) and names_word([8, 8, 40, 20])  # J 1 - 0.5 = 0.5
    assert not names_word([8, 3, 40, 0])  # J 0.375
    with pytest.raises(ValueError, match="2 true texts but 1 generated"):
        word_readout(truth[:2], said[:1], ["red"])


def test_word_probe_items_spread_over_the_catalog_and_need_a_described_image():
    def item(i, path=Path("x.jpg"), desc="a red mug"):
        return SimpleNamespace(item_id=f"{i:03d}", primary_image=SimpleNamespace(path=path, description=desc))

    catalog = [item(i) for i in range(100)] + [item(200, path=None), item(201, desc=None)]
    picked = word_probe_items(catalog, n=10)
    assert picked == [f"{i:03d}" for i in range(0, 100, 10)]
    assert word_probe_items(catalog[95:], n=10) == ["095", "096", "097", "098", "099"]


def test_without_attribute_truth_the_report_and_console_name_the_words_the_model_does_not_read():
    teacher = {"slim": [18, 18, 30, 3], "wide": [17, 16, 31, 1], "star": [8, 1, 40, 5], "moon": [8, 0, 40, 0]}
    after = {"slim": [18, 17, 30, 2], "wide": [17, 2, 31, 2], "star": [8, 0, 40, 0], "moon": [8, 0, 40, 0]}
    probe = {"words": {"items": 48, "teacher": teacher, "after": after,
                       "examples": [{"item_id": "a", "description": "slim", "teacher": "slim", "after": "slim"}]}}
    text = _words_text(probe)
    assert text.startswith("Of the 4 words that set this dataset's descriptions apart and that its requests use (each in 3 "
                           "or more of the 48 probed items' descriptions), the model names 2 from all its image tokens "
                           "(slim, wide); from the title + 5 vectors after stage 1, 1 of those.")
    assert "The vectors lost wide:" in text and "It names none of moon, star from the image" in text
    lines = _probe_lines(probe)
    assert "| slim | 18 | 1.00 / 0.10 | 0.94 / 0.07 |" in lines and f"**{text}**" in lines
    assert _words_text({}) is None and _words_text({"words": {"items": 0, "teacher": {}, "after": {}}}) is None
    assert _probe_lines({}) == []


def test_a_rerun_probes_nothing_again_once_the_probe_of_its_kind_is_in_place():
    """The teacher's probe (synthetic catalog) and the word probe (any other) run once: a rerun whose probe.json
    already holds them reads them back (the quickstart's rerun re-evaluates; it does not probe again)."""
    from lavic_ray.diagnosis import diagnose

    def no_probe(*a, **k):
        raise AssertionError("probed again")

    stuck = {"lavic": {"learned": False}}
    for probe in ({"after": {}, "teacher": {}}, {"words": {"items": 3}}):
        assert diagnose(None, None, stuck, probe, no_probe) is probe
    assert diagnose(None, None, {"lavic": {"learned": True}}, {}, no_probe) == {}  # it learned: nothing to probe
