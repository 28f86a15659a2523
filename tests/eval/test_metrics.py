"""Metrics against hand-computed cases."""

import math

import pytest

from lavic_ray.eval.metrics import Judged, aggregate, conversation_metrics, per_gt_item_metrics, rank_by_scores

CANDS = ("a", "b", "c", "d", "e")


def j(gt, ranking, cands=CANDS, cid="c1"):
    return Judged.make(cid, gt, cands, ranking)


def test_single_gt_hit_at_rank_3():
    m = conversation_metrics(j(["c"], ["a", "b", "c", "d", "e"]), ks=(1, 3, 5))
    assert m["hr@1"] == 0 and m["hr@3"] == 1 and m["hr@5"] == 1
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert m["mrr@3"] == pytest.approx(1 / 3) and m["mrr@1"] == 0


def test_multiple_gt_items_per_conversation_and_per_item():
    judged = j(["b", "d"], ["b", "a", "d", "c", "e"])
    m = conversation_metrics(judged, ks=(1, 3))
    assert m["hr@1"] == 1
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 = 1 + 1/log2(3)
    assert m["ndcg@3"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert m["ndcg@1"] == pytest.approx(1.0)
    rows = per_gt_item_metrics(judged, ks=(1, 3))
    assert [r["hr@1"] for r in rows] == [1.0, 0.0]
    assert [r["mrr@3"] for r in rows] == [1.0, pytest.approx(1 / 3)]


def test_aggregate_counts_conversations_and_gt_items():
    judged = [j(["b", "d"], ["b", "a", "d", "c", "e"], cid="x"), j(["e"], ["a", "b", "c", "d", "e"], cid="y")]
    m = aggregate(judged, ks=(1, 5), oracle_k=5)
    assert m["conversations"] == 2 and m["gt_items"] == 3
    assert m["hr@1"] == 0.5  # x hits, y misses
    assert m["hr@1_per_gt_item"] == pytest.approx(1 / 3)  # b hits; d and e miss
    assert m["hr@5_per_gt_item"] == 1.0
    assert m["mrr@5"] == pytest.approx((1 + 1 / 5) / 2)
    assert m["valid_ratio"] == 1.0
    assert m["oracle_hr@5"] == 1.0


def test_invalid_and_empty_predictions():
    judged = [
        j(["a"], ["zz", "a"], cid="x"),  # top prediction not a candidate
        j(["a"], [], cid="y"),  # nothing parsed
        j(["a"], ["a"], cid="z"),
    ]
    m = aggregate(judged, ks=(1, 2))
    assert m["valid_ratio"] == pytest.approx(1 / 3)
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3)


def test_duplicates_in_a_prediction_count_once():
    assert j(["c"], ["a", "a", "a", "c"]).ranking == ("a", "c")
    assert j(["c", "c"], ["c"]).gt_items == ("c",)


def test_oracle_is_the_gt_in_candidates_share():
    judged = [j(["a"], ["a"], cands=("a", "b"), cid="x"), j(["q"], ["a"], cands=("a", "b"), cid="y")]
    m = aggregate(judged, ks=(1,), oracle_k=10)
    assert m["oracle_hr@10"] == 0.5 and m["hr@1"] == 0.5


def test_ties_are_broken_against_the_ground_truth():
    # all tied: the ground truth goes last among them
    assert rank_by_scores(["a", "b", "c"], [0.5, 0.5, 0.5], ["a"]) == ["b", "c", "a"]
    # a strict winner still wins
    assert rank_by_scores(["a", "b", "c"], [0.1, 0.9, 0.5], ["b"]) == ["b", "c", "a"]
    # gt tied with a better-listed distractor ranks after it; untied order by score
    assert rank_by_scores(["a", "b", "c", "d"], [0.2, 0.7, 0.7, 0.9], ["b"]) == ["d", "c", "b", "a"]
    # NaN ranks last
    assert rank_by_scores(["a", "b"], [float("nan"), 0.0], []) == ["b", "a"]
    with pytest.raises(ValueError):
        rank_by_scores(["a"], [1.0, 2.0])


def test_constant_scores_never_score_a_hit():
    judged = [j(["a"], rank_by_scores(CANDS, [0.0] * 5, ["a"]), cid=str(i)) for i in range(3)]
    assert aggregate(judged, ks=(1,))["hr@1"] == 0.0


def test_no_conversations_and_no_gt_are_errors():
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError):
        Judged.make("x", [], CANDS, ["a"])


def test_chance_and_the_did_not_learn_verdict():
    from lavic_ray.eval.metrics import above_chance, binomial_tail, chance_hr1, learning_verdict

    js = [Judged.make("a", ["x"], list("xbcdefghij"), list("xbcdefghij")),
          Judged.make("b", ["q"], list("xbcdefghij"), list("xbcdefghij"))]  # b: ground truth not in the list
    assert chance_hr1(js) == pytest.approx(0.05)
    assert aggregate(js)["chance_hr@1"] == pytest.approx(0.05)
    assert binomial_tail(0, 30, 0.1) == 1.0 and binomial_tail(30, 30, 0.1) == pytest.approx(0.1 ** 30)
    # 30 conversations at chance 0.09: 3 hits is chance, 10 is not
    assert not above_chance(3 / 30, 30, 0.09) and above_chance(10 / 30, 30, 0.09)

    def hist(*hr):
        return [{"step": 10 * (i + 1), "train_loss": 0.69} for i in range(len(hr))] + [
            {"step": 10 * (i + 1), "valid_hr@1": h, "valid_chance_hr@1": 0.09, "valid_conversations": 30}
            for i, h in enumerate(hr)]

    stuck = learning_verdict(hist(0.067, 0.1, 0.067))  # the Intel machine's curve in issue 21
    assert stuck["learned"] is False and stuck["valid_curve"] == [[10, 0.067], [20, 0.1], [30, 0.067]]
    learned = learning_verdict(hist(0.1, 0.37, 0.47))
    assert learned["learned"] is True and learned["best_step"] == 30 and learned["p_value"] < 0.05
    # one lucky validation among many is corrected for: 6/30 at chance 0.09 is p ~ 0.08 alone
    assert learning_verdict(hist(*[0.1] * 9, 0.2))["learned"] is False
    assert learning_verdict([{"step": 1, "train_loss": 1.0}])["learned"] is None
