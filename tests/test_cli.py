"""The `lavic` command: validate, synth, index/search, and its errors."""

import json

from lavic_ray.cli import main


def test_validate_exit_codes_and_json(capsys, synth_root, tmp_path):
    assert main(["validate", str(synth_root)]) == 0
    assert "OK: 0 errors" in capsys.readouterr().out
    bad = tmp_path / "bad"
    (bad / "d").mkdir(parents=True)
    (bad / "item2meta_train.json").write_text('{"B000000001": {"title": "Mug"}}')
    (bad / "d" / "train.jsonl").write_text('{"context": "<submission>x</submission>", "gt_items": ["B000000001"], "candidates_st": []}\n')
    assert main(["validate", str(bad), "--json", "--images", "none"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"][0]["line"] == 1
    assert report["problems"][0]["field"] == "candidates_st"


def test_synth_cli_and_index_search(capsys, tmp_path):
    out = tmp_path / "cat"
    assert main(["synth", "--out", str(out), "--items", "96", "--conversations", "40", "--seed", "3", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["items"] == 96 and manifest["seed"] == 3
    assert main(["synth", "--out", str(out), "--items", "96"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["index", "--items", str(out), "--retriever", "bm25", "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "a coffee mug", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3


def test_bad_config_override_is_a_clear_error(capsys, tmp_path):
    assert main(["synth", "--out", str(tmp_path / "x"), "--set", "synth.colours=3"]) == 2
    assert "synth.colours: unknown key" in capsys.readouterr().err


def test_preprocess_and_describe_cli(capsys, synth_root, tiny_dir, tmp_path):
    import json

    assert main(["preprocess", "--catalog", str(synth_root), "--out", str(tmp_path / "pre"), "--checkpoint", str(tiny_dir),
                 "--no-ray", "--json", "--set", "preprocess.store_views=false"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["images"] > 0 and m["bad"] == 0 and (tmp_path / "pre" / "manifest.json").is_file()
    assert main(["describe", "--catalog", str(synth_root), "--out", str(tmp_path / "d"), "--checkpoint", str(tiny_dir),
                 "--no-ray", "--set", "describe.overwrite=true", "--set", "describe.limit=2", "--set", "describe.max_new_tokens=3"]) == 0
    assert "described 2 images" in capsys.readouterr().out
    assert main(["preprocess", "--catalog", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--checkpoint",
                 str(tiny_dir), "--no-ray"]) == 2


def test_version_and_one_error_type(capsys, monkeypatch, tmp_path):
    import pytest

    from lavic_ray import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    # a user error: exit 2, one line naming what to fix
    assert main(["evaluate", "--conversations", str(tmp_path / "none.jsonl"), "--method", "random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lavic evaluate: error: conversations file not found" in err
    # a bug is not a user error: it keeps its traceback (here, a KeyError from inside the code)
    import lavic_ray.data.layout as layout

    monkeypatch.setattr(layout, "read_conversations", lambda *a, **k: {}["oops"])
    with pytest.raises(KeyError, match="oops"):
        main(["evaluate", "--conversations", str(tmp_path / "none.jsonl"), "--method", "random"])


def test_flags_become_dotted_overrides_and_set_wins(tmp_path):
    from lavic_ray.cli import _load, build_parser

    args = build_parser().parse_args(["recommend", "--catalog", str(tmp_path), "--out", "o", "--variant", "lavic-title-only",
                                      "--max-failures", "3", "--set", "job.max_failures=4"])
    cfg = _load(args)
    assert cfg.dataset.root == str(tmp_path) and cfg.job.variant == "lavic-title-only" and cfg.job.max_failures == 4
    args = build_parser().parse_args(["embed", "--catalog", "c", "--out", "t.parquet", "--batch-size", "7", "--actors", "2"])
    cfg = _load(args)
    assert (cfg.embed.batch_size, cfg.embed.actors) == (7, 2)
    # no flag: the config's own default (the CLI never carries a second default)
    args = build_parser().parse_args(["distill", "--out", "o"])
    assert _load(args).job.max_failures == load_config_default().job.max_failures


def load_config_default():
    from lavic_ray.config import LavicConfig

    return LavicConfig()
