"""Bad input files and flags: a one-line message naming the file, the line and the field - never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavic_ray.cli import main
from lavic_ray.data.layout import read_conversations_checked, read_items_checked
from lavic_ray.data.validate import validate_root

GOOD = {"context": "<submission>a mug</submission>", "gt_items": ["B000000001"], "candidates_st": ["B000000001"]}


def _dataset(tmp_path: Path, lines: bytes | None = None, items: bytes | None = None) -> Path:
    root = tmp_path / "ds"
    (root / "d").mkdir(parents=True)
    (root / "item2meta_train.json").write_bytes(items if items is not None else json.dumps({"B000000001": {"title": "Mug"}}).encode())
    (root / "d" / "test.jsonl").write_bytes(lines if lines is not None else (json.dumps(GOOD) + "\n").encode())
    return root


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def test_deeply_nested_json_is_a_problem_not_a_recursion_error(tmp_path, capsys):
    deep = ("[" * 1500 + "]" * 1500).encode()
    root = _dataset(tmp_path, (json.dumps(GOOD) + "\n").encode() + deep + b"\n")
    report = validate_root(root, images="none")
    assert any(p.line == 2 and "nested too deeply" in p.message for p in report.errors)
    _one_line_error(capsys, ["evaluate", "--conversations", str(root / "d" / "test.jsonl"), "--method", "random"],
                    "test.jsonl:2", "nested too deeply")


def test_encodings_say_file_line_and_what_to_do(tmp_path, capsys):
    root = _dataset(tmp_path, (json.dumps(GOOD) + "\n").encode() + b'{"context": "\xff"}\n')
    _one_line_error(capsys, ["evaluate", "--conversations", str(root / "d" / "test.jsonl"), "--method", "random"],
                    "test.jsonl:2", "not UTF-8: byte 0xff", "UTF-8")
    assert main(["evaluate", "--conversations", str(root / "d" / "test.jsonl"), "--method", "random", "--json"]) == 2
    assert "not UTF-8" in json.loads(capsys.readouterr().out)["error"]  # --json prints the error as JSON too
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    _one_line_error(capsys, ["evaluate", "--conversations", str(utf16), "--method", "random"], "u16.jsonl:1", "UTF-16")
    bom = _dataset(tmp_path / "bom", items=b"\xef\xbb\xbf" + json.dumps({"B000000001": {"title": "Mug"}}).encode())
    assert validate_root(bom, images="none").ok  # a UTF-8 byte-order mark is accepted


def test_what_the_validator_no_longer_lets_through(tmp_path):
    dup = b'{"B000000001": {"title": "Mug"},\n "B000000001": {"title": "Other"}}'
    problems = read_items_checked(_dataset(tmp_path / "a", items=dup))[1]
    assert any(p.kind == "duplicate_item" and p.line == 2 and "first on line 1" in p.message for p in problems)

    root = _dataset(tmp_path / "b")
    (root / "d" / "test.jsonl").unlink()
    (root / "d" / "test.jsonl").mkdir()
    assert any(p.kind == "not_a_file" and "test.jsonl" in p.file for p in validate_root(root, images="none").errors)

    root = _dataset(tmp_path / "c")
    (root / "item2meta_train.json").unlink()
    (root / "item2meta_train.json").mkdir()
    errs = validate_root(root, images="none").errors
    assert any(p.kind == "not_a_file" and p.file.endswith("item2meta_train.json") for p in errs)

    root = _dataset(tmp_path / "e", lines=b"\n")
    assert any(p.kind == "empty_file" for p in validate_root(root, images="none").warnings)

    root = _dataset(tmp_path / "f")
    (root / "item2meta_valid.jsonl").write_text(json.dumps({"title": "x", "image_name": "../../../../etc/X_0.jpg"}) + "\n")
    assert any(p.kind == "bad_image_name" and "bare file name" in p.message for p in validate_root(root, images="none").errors)


def test_evaluate_flags_ground_truth_the_catalog_does_not_know(tmp_path, capsys, caplog):
    root = _dataset(tmp_path, (json.dumps({**GOOD, "gt_items": ["B0UNKNOWN0"]}) + "\n").encode())
    assert main(["evaluate", "--conversations", str(root / "d" / "test.jsonl"), "--method", "random", "--items", str(root),
                 "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["gt_items_unknown_to_catalog"] == 1
    assert "not in the catalog" in out.err + caplog.text  # a warning (stderr from the command; pytest captures logging)


def test_flags_and_configs(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(capsys, ["synth", "--out", str(f)], "is a file")
    for text, fragment in (("a: [1,", "not valid YAML"), ("", "an empty file"), ("- 1\n- 2\n", "got list"),
                           ("applications: 3\n", "not a valid Serve config")):
        cfg = tmp_path / "serve.yaml"
        cfg.write_text(text)
        _one_line_error(capsys, ["serve", "--serve-config", str(cfg)], "serve.yaml", fragment)
    assert main(["synth", "--out", str(tmp_path / "o"), "--set", "stage2.lr=-1"]) == 2  # a line per bad setting
    assert "stage2.lr: Input should be greater than 0" in capsys.readouterr().err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_as_a_conversations_file_give_problems_never_a_crash(tmp_path, data):
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(data)
    convs, problems = read_conversations_checked(p)
    for prob in problems:
        assert prob.file == str(p) and prob.line >= 0 and prob.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.text(max_size=12), st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(),
                                                                       max_size=3), max_size=4).map(lambda d: json.dumps(d).encode())))
def test_any_item_metadata_gives_problems_never_a_crash(tmp_path, data):
    root = tmp_path / "m"
    root.mkdir(exist_ok=True)
    (root / "item2meta_train.json").write_bytes(data)
    items, problems = read_items_checked(root)
    for prob in problems:
        assert prob.file and prob.message
