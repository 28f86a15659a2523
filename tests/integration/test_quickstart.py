"""The README's main job, end to end, on a small synthetic catalog."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_quickstart_json_last_line(tmp_path):
    cmd = [sys.executable, "-m", "lavic_ray.cli", "quickstart", "--workdir", str(tmp_path), "--json",
           "--set", "synth.items=96", "--set", "synth.conversations=60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == {"first-candidate", "random", "sbert", "bm25"}
    for m in results.values():
        assert {"conversations", "hr@1", "hr@1_per_gt_item", "ndcg@10", "valid_ratio", "oracle_hr@10"} <= set(m)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| sbert |" in report and (tmp_path / "report" / "config.yaml").is_file()
    # a rerun reuses the catalog and gives the same figures
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == results
    assert "reusing the synthetic catalog" in again.stderr
