"""Readers and the validator on every kind of bad input, and on the real reference files."""

import json
from pathlib import Path

import pytest
from PIL import Image

from lavic_ray.data.layout import Catalog, read_conversations, read_conversations_checked, read_items_checked
from lavic_ray.data.records import DataError, format_turns, parse_turns, split_image_name
from lavic_ray.data.validate import validate_root

GOOD = {"context": "<submission>need a mug</submission>\n<comment>which colour?</comment>\n",
        "gt_items": ["B000000001"], "candidates_st": ["B000000001", "B000000002"]}


def write_dataset(root: Path, conv_lines: list[str], items: dict | None = None, valid_items: list[dict] | None = None,
                  images: dict[str, bytes | None] | None = None) -> Path:
    (root / "dom").mkdir(parents=True)
    (root / "dom" / "test.jsonl").write_text("".join(line + "\n" for line in conv_lines))
    items = items if items is not None else {
        "B000000001": {"title": "Mug", "image_descriptions_llava_cleaned": {"B000000001_0.jpg": "a mug"}},
        "B000000002": {"title": "Vase", "image_descriptions_llava_cleaned": {"B000000002_0.jpg": "a vase"}},
    }
    (root / "item2meta_train.json").write_text(json.dumps(items, indent=2))
    if valid_items is not None:
        (root / "item2meta_valid.jsonl").write_text("".join(json.dumps(v) + "\n" for v in valid_items))
    (root / "images").mkdir()
    images = images if images is not None else {"B000000001_0.jpg": None, "B000000002_0.jpg": None}
    for name, data in images.items():
        if data is None:
            Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "images" / name)
        else:
            (root / "images" / name).write_bytes(data)
    return root


def kinds(report):
    return {(p.kind, Path(p.file).name, p.line, p.field) for p in report.problems}


def test_good_dataset_validates(tmp_path):
    root = write_dataset(tmp_path, [json.dumps(GOOD)])
    report = validate_root(root)
    assert report.ok and not report.problems, report.render()
    assert report.counts == {"items": 2, "images": 2, "conversations:dom/test": 1}


@pytest.mark.parametrize(
    "line, kind, field",
    [
        ('{"context": "x", "gt_items": [', "malformed_json", ""),
        ("[1, 2]", "mistyped_record", ""),
        (json.dumps({k: v for k, v in GOOD.items() if k != "gt_items"}), "missing_field", "gt_items"),
        (json.dumps({**GOOD, "candidates_st": "B000000001"}), "mistyped_field", "candidates_st"),
        (json.dumps({**GOOD, "candidates_st": [1, 2]}), "mistyped_field", "candidates_st"),
        (json.dumps({**GOOD, "context": 5}), "mistyped_field", "context"),
        (json.dumps({**GOOD, "candidates_st": []}), "empty_list", "candidates_st"),
        (json.dumps({**GOOD, "candidates_gpt_large": []}), "empty_list", "candidates_gpt_large"),
        (json.dumps({**GOOD, "gt_items": []}), "empty_list", "gt_items"),
        (json.dumps({**GOOD, "gt": 3}), "mistyped_field", "gt"),
        (json.dumps({**GOOD, "candidates_st": ["B000000001", "B0UNKNOWN1"]}), "unknown_item", "candidates_st"),
        (json.dumps({**GOOD, "gt_items": ["B0UNKNOWN1"]}), "unknown_item", "gt_items"),
        (json.dumps({**GOOD, "context_items": ["B0UNKNOWN1"]}), "unknown_item", "context_items"),
    ],
)
def test_each_bad_conversation_is_located(tmp_path, line, kind, field):
    root = write_dataset(tmp_path, [json.dumps(GOOD), line])
    report = validate_root(root)
    assert not report.ok
    assert (kind, "test.jsonl", 2, field) in kinds(report), report.render()
    # the good first line is untouched
    assert all(p.line != 1 for p in report.problems if Path(p.file).name == "test.jsonl")


def test_strict_reader_raises_with_file_line_and_field(tmp_path):
    root = write_dataset(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "candidates_st": []})])
    with pytest.raises(DataError) as e:
        read_conversations(root / "dom" / "test.jsonl")
    p = e.value.problem
    assert (p.line, p.field, p.kind) == (2, "candidates_st", "empty_list")
    assert "test.jsonl:2" in str(e.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_conversations(root / "dom" / "nope.jsonl")


def test_duplicate_candidates_warn_but_load(tmp_path):
    root = write_dataset(tmp_path, [json.dumps({**GOOD, "candidates_st": ["B000000001", "B000000001"]})])
    convs, problems = read_conversations_checked(root / "dom" / "test.jsonl")
    assert len(convs) == 1 and [p.kind for p in problems] == ["duplicate_candidate"]
    assert problems[0].severity == "warning"


def test_bad_item_metadata_is_located_by_line(tmp_path):
    items_text = (
        '{\n'
        '  "B000000001": {"title": "Mug"},\n'
        '  "B000000002": {"name": "no title"},\n'
        '  "B000000003": {"title": 7},\n'
        '  "B000000004": {"title": "Lamp", "image_descriptions_llava_cleaned": {"B000000009_0.jpg": "x", "B000000004_1.jpg": 5}},\n'
        '  "B000000005": "just a string"\n'
        '}\n'
    )
    (tmp_path / "item2meta_train.json").write_text(items_text)
    items, problems = read_items_checked(tmp_path)
    got = {(p.kind, p.line, p.field) for p in problems}
    assert ("missing_field", 3, "B000000002.title") in got
    assert ("mistyped_field", 4, "B000000003.title") in got
    assert ("bad_image_name", 5, "B000000004.image_descriptions_llava_cleaned") in got
    assert ("mistyped_field", 5, "image_descriptions_llava_cleaned.B000000004_1.jpg") in got
    assert ("mistyped_record", 6, "B000000005") in got
    assert set(items) == {"B000000001", "B000000004"}


def test_truncated_item_metadata_reports_the_line(tmp_path):
    (tmp_path / "item2meta_train.json").write_text('{\n "B000000001": {"title": "Mug"},\n "B000000002": {"title": \n')
    items, problems = read_items_checked(tmp_path)
    assert set(items) == {"B000000001"}
    assert problems[0].kind == "malformed_json" and problems[0].line >= 3


def test_valid_item_lines(tmp_path):
    lines = [
        {"title": "Mug", "image_name": "B000000001_2.jpg", "image": "u", "image_description_llava_cleaned": "d2"},
        {"title": "Mug", "image_name": "B000000001_0.jpg", "image": "u", "image_description_llava_cleaned": "d0"},
        {"title": "Vase", "image_name": "vase.jpg", "image": "u"},
        {"image_name": "B000000003_0.jpg"},
    ]
    (tmp_path / "item2meta_valid.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines) + "{oops\n")
    items, problems = read_items_checked(tmp_path)
    got = {(p.kind, p.line, p.field) for p in problems}
    assert got == {("bad_image_name", 3, "image_name"), ("missing_field", 4, "title"), ("malformed_json", 5, "")}
    mug = items["B000000001"]
    assert [im.name for im in mug.images] == ["B000000001_0.jpg", "B000000001_2.jpg"]  # primary first
    assert mug.primary_image.description == "d0"


def test_missing_and_unreadable_images_are_warnings(tmp_path):
    root = write_dataset(
        tmp_path, [json.dumps(GOOD)],
        images={"B000000001_0.jpg": b"not a jpeg at all", "B000000003_0.jpg": None},
    )
    (root / "images" / "B000000009_0.jpg").write_bytes(b"")
    report = validate_root(root)
    got = {(p.kind, p.field) for p in report.problems}
    assert ("unreadable_image", "B000000001") in got
    assert ("missing_image", "B000000002") in got
    assert report.ok  # warnings only: the pipeline falls back to no-image vectors
    assert all(p.severity == "warning" for p in report.problems)


def test_truncated_image_is_caught_when_decoding(tmp_path):
    root = write_dataset(tmp_path, [json.dumps(GOOD)])
    good = root / "images" / "B000000001_0.jpg"
    Image.new("RGB", (256, 256), (1, 2, 3)).save(good, quality=95)
    good.write_bytes(good.read_bytes()[:400])
    report = validate_root(root, images="decode")
    assert ("unreadable_image", "B000000001") in {(p.kind, p.field) for p in report.problems}


def test_turns_round_trip():
    ctx = "<submission>Need a mug</submission>\n<comment>Which colour?\nBlue?</comment>\n"
    turns = parse_turns(ctx)
    assert [t.role for t in turns] == ["submission", "comment"]
    assert turns[1].text == "Which colour?\nBlue?"
    assert format_turns(turns) == ctx
    assert parse_turns("just text")[0].role == "submission"
    assert split_image_name("0060188782_11.jpg") == ("0060188782", 11)
    assert split_image_name("nope.png") is None


def test_reference_data_reads(reference_data):
    convs = read_conversations(reference_data / "all_beauty" / "valid.jsonl")
    assert len(convs) == 758
    assert all(len(c.candidate_list("candidates_st")) == 10 for c in convs)
    assert all(len(c.candidate_list("candidates_gpt_large")) == 10 for c in convs)
    assert sum(len(c.gt_items) > 1 for c in convs) == 83
    assert all(c.turns() and c.turns()[0].role == "submission" for c in convs)
    catalog = Catalog.load(reference_data)
    assert len(catalog) == 508  # 512 image lines, some items with several images
    assert sum(len(it.images) for it in catalog) == 512
    assert all(im.description for it in catalog for im in it.images)


def test_reference_root_validation_reports_unknown_items(reference_data):
    report = validate_root(reference_data, images="none")
    # titles of the conversations' candidates are not shipped: each is reported, located
    by_kind = report.by_kind()
    assert set(by_kind) == {"unknown_item"}
    assert report.counts["conversations:all_beauty/valid"] == 758
    assert all(p.line > 0 and p.field for p in report.problems)
