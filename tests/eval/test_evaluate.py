"""`lavic evaluate` on the real reference data and on the synthetic catalog."""

import json

import pytest

from lavic_ray.cli import main
from lavic_ray.config import LavicConfig
from lavic_ray.data.layout import Catalog, read_conversations
from lavic_ray.eval.evaluate import METHODS, EvalContext, evaluate


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_reference_first_candidate_figures(capsys, reference_data):
    m = run_json(capsys, "evaluate", "--conversations", str(reference_data / "all_beauty" / "valid.jsonl"),
                 "--method", "first-candidate", "--candidates-key", "candidates_st", "--json")
    assert m["conversations"] == 758
    assert f"{m['hr@1']:.4f}" == "0.0264"
    assert f"{m['oracle_hr@10']:.4f}" == "0.2230"
    for key in ("hr@1_per_gt_item", "ndcg@10", "valid_ratio"):
        assert key in m
    assert m["valid_ratio"] == 1.0
    assert m["hr@1_per_gt_item"] == pytest.approx(20 / 837)


def test_reference_gpt_candidates_and_random_seed(capsys, reference_data):
    f = str(reference_data / "amazon_home" / "valid.jsonl")
    a = run_json(capsys, "evaluate", "--conversations", f, "--method", "random", "--candidates-key", "candidates_gpt_large", "--seed", "1", "--json")
    b = run_json(capsys, "evaluate", "--conversations", f, "--method", "random", "--candidates-key", "candidates_gpt_large", "--seed", "1", "--json")
    c = run_json(capsys, "evaluate", "--conversations", f, "--method", "random", "--candidates-key", "candidates_gpt_large", "--seed", "2", "--json")
    assert a == b and a["conversations"] == 368
    assert a["oracle_hr@10"] == c["oracle_hr@10"]
    assert (a["hr@1"], a["mrr@10"]) != (c["hr@1"], c["mrr@10"])


def test_title_methods_need_titles(capsys, reference_data):
    f = str(reference_data / "all_beauty" / "valid.jsonl")
    assert main(["evaluate", "--conversations", f, "--method", "bm25"]) == 2
    assert "pass --items" in capsys.readouterr().err
    assert main(["evaluate", "--conversations", f, "--method", "sbert", "--items", str(reference_data)]) == 2
    assert "catalog lacks" in capsys.readouterr().err
    assert main(["evaluate", "--conversations", f, "--method", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["evaluate", "--conversations", f, "--method", "random", "--candidates-key", "candidates_x"]) == 2
    assert "candidates_x" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["first-candidate", "random", "sbert", "bm25"])
def test_every_baseline_on_the_synthetic_test_split(synth_root, method, tmp_path):
    convs = read_conversations(synth_root / "synthetic" / "test.jsonl")
    ctx = EvalContext(LavicConfig(), Catalog.load(synth_root))
    m = evaluate(convs, method, "candidates_st", ctx, out_dir=tmp_path)
    assert m["conversations"] == len(convs) and m["valid_ratio"] == 1.0
    assert m["oracle_hr@10"] == pytest.approx(0.9, abs=0.05)
    assert 0.0 <= m["hr@1"] <= m["hr@5"] <= m["hr@10"] == m["oracle_hr@10"]
    # the written artifacts: metrics, one prediction per conversation, and the config beside them
    assert json.loads((tmp_path / "metrics.json").read_text())["hr@1"] == m["hr@1"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == len(convs)
    assert (tmp_path / "config.yaml").is_file()


def test_registry_has_the_baselines():
    assert {"first-candidate", "random", "sbert", "bm25"} <= set(METHODS)

