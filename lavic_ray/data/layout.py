"""Readers for the LaViC data layout (conversations, item metadata, images).

One parsing path serves both the strict readers the pipeline uses (raise
:class:`DataError` on the first error) and the validator (collect every problem).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from lavic_ray.data.records import (
    REQUIRED_CANDIDATE_KEYS,
    Conversation,
    DataError,
    Item,
    ItemImage,
    Problem,
    split_image_name,
)
from lavic_ray.errors import InputMissing, InvalidInput, UnknownKey

SPLITS = ("train", "valid", "test")
ITEMS_TRAIN_FILE = "item2meta_train.json"
ITEMS_VALID_FILE = "item2meta_valid.jsonl"
IMAGES_DIR = "images"
DESC_MAP_FIELD = "image_descriptions_llava_cleaned"
DESC_FIELD = "image_description_llava_cleaned"
#: The synthetic catalog's manifest and attribute truth (``lavic synth``; tests and reports, never a model input).
MANIFEST_FILE = "synth_manifest.json"
TRUTH_FILE = "synth_truth.json"


# --------------------------------------------------------------------------- JSON lines


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _not_a_file(path: Path, what: str) -> Problem | None:
    """A problem when ``path`` is a directory (or otherwise not a regular file)."""
    if path.is_dir():
        return Problem(str(path), 0, "", f"is a directory; expected {what}", "not_a_file")
    return None


def _json_error(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "malformed JSON: nested too deeply (arrays or objects over ~1,000 levels)"
    return f"malformed JSON: {e.msg} (column {e.colno})"


def iter_jsonl(path: Path) -> Iterator[tuple[int, object | None, Problem | None]]:
    """Yield ``(line_number, parsed_object, problem)`` for each non-blank line.

    Never raises on bad content: a line that is not UTF-8, not JSON or nested too deeply is a
    problem naming its line; a UTF-8 byte-order mark is accepted, a UTF-16 file is one problem.
    """
    path = Path(path)
    bad = _not_a_file(path, "a JSON-lines file (one JSON object per line)")
    if bad:
        yield 0, None, bad
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw[:2] in UTF16_BOMS:
                yield 1, None, Problem(str(path), 1, "", "the file is UTF-16 (it starts with a UTF-16 byte-order mark): "
                                                         "save it as UTF-8", "bad_encoding")
                return
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, Problem(str(path), lineno, "", f"not UTF-8: byte 0x{raw[e.start]:02x} at column "
                                                                   f"{e.start + 1}; save the file as UTF-8", "bad_encoding")
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except (json.JSONDecodeError, RecursionError) as e:
                yield lineno, None, Problem(str(path), lineno, "", _json_error(e), "malformed_json")


class _Lines:
    """Line numbers of positions in a text: the newlines are found once, each lookup is a bisection (counting them
    from the start for every item made reading a large item2meta file quadratic)."""

    def __init__(self, text: str):
        import re

        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def __call__(self, pos: int) -> int:
        import bisect

        return bisect.bisect_left(self.newlines, pos) + 1  # newlines before pos, plus one


def iter_json_object(path: Path) -> Iterator[tuple[int, str | None, object | None, Problem | None]]:
    """Yield ``(line, key, value, problem)`` for each member of a top-level JSON object.

    ``json.load`` forgets where things are; this scanner decodes member by member
    so every item of ``item2meta_train.json`` is reported with its line. A key given twice
    (the same item ID twice, which ``json.load`` would silently collapse) is a problem too.
    """
    path = Path(path)
    bad = _not_a_file(path, "a JSON object mapping item ID to metadata")
    if bad:
        yield 0, None, None, bad
        return
    data = path.read_bytes()
    if data[:2] in UTF16_BOMS:
        yield 1, None, None, Problem(str(path), 1, "", "the file is UTF-16 (it starts with a UTF-16 byte-order mark): "
                                                       "save it as UTF-8", "bad_encoding")
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        yield line, None, None, Problem(str(path), line, "", f"not UTF-8: byte 0x{data[e.start]:02x} at column {col}; "
                                                             "save the file as UTF-8", "bad_encoding")
        return
    dec = json.JSONDecoder()
    seen: dict[str, int] = {}
    n = len(text)
    line_of = _Lines(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(pos: int, msg: str) -> Problem:
        return Problem(str(path), line_of(pos), "", f"malformed JSON: {msg}", "malformed_json")

    i = skip_ws(0)
    if i >= n or text[i] != "{":
        yield line_of(i), None, None, fail(i, "expected a top-level object mapping item ID to metadata")
        return
    i = skip_ws(i + 1)
    if i < n and text[i] == "}":
        return
    while True:
        start = i
        try:
            key, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield line_of(e.pos), None, None, fail(e.pos, e.msg)
            return
        if not isinstance(key, str):
            yield line_of(start), None, None, fail(start, "expected a string key")
            return
        i = skip_ws(i)
        if i >= n or text[i] != ":":
            yield line_of(i), None, None, fail(i, "expected ':' after key")
            return
        i = skip_ws(i + 1)
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield line_of(e.pos), key, None, fail(e.pos, f"{e.msg} (in item {key!r})")
            return
        except RecursionError:
            yield line_of(start), key, None, fail(start, f"nested too deeply (in item {key!r})")
            return
        line = line_of(start)
        if key in seen:
            yield line, key, None, Problem(str(path), line, key, f"item {key!r} is listed twice (first on line {seen[key]}); "
                                                                 "keep one entry per item", "duplicate_item")
        else:
            seen[key] = line
            yield line, key, value, None
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "}":
            if skip_ws(i + 1) != n:
                yield line_of(i + 1), None, None, fail(i + 1, "extra data after the object")
            return
        yield line_of(i), None, None, fail(i, "expected ',' or '}'")
        return


# --------------------------------------------------------------------------- conversations


def _id_list(obj: dict, key: str, file: str, line: int, problems: list[Problem], *, allow_empty: bool) -> tuple[str, ...] | None:
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(file, line, key, f"must be a list of item ID strings, got {type(value).__name__}"
                                f"{'' if not isinstance(value, list) else ' with non-string entries'}", "mistyped_field"))
        return None
    if not value and not allow_empty:
        problems.append(Problem(file, line, key, "is empty", "empty_list"))
        return None
    return tuple(value)


def parse_conversation(
    obj: object, file: str, line: int, candidate_keys: tuple[str, ...] = REQUIRED_CANDIDATE_KEYS
) -> tuple[Conversation | None, list[Problem]]:
    """Check one decoded conversation line and build its record.

    Args:
        obj: The decoded JSON value of the line.
        file: The file it came from (for problems).
        line: Its 1-based line number.
        candidate_keys: The candidate-list fields that must be present; other
            ``candidates*`` fields are checked when present.

    Returns:
        The conversation (None when an error makes it unusable) and every problem found.
    """
    problems: list[Problem] = []
    if not isinstance(obj, dict):
        return None, [Problem(file, line, "", f"expected a JSON object, got {type(obj).__name__}", "mistyped_record")]
    for key in ("context", "gt_items", *candidate_keys):
        if key not in obj:
            problems.append(Problem(file, line, key, "missing required field", "missing_field"))
    if problems:
        return None, problems
    context = obj["context"]
    if not isinstance(context, str):
        problems.append(Problem(file, line, "context", f"must be a string, got {type(context).__name__}", "mistyped_field"))
    elif not context.strip():
        problems.append(Problem(file, line, "context", "is empty", "empty_field"))
    gt_items = _id_list(obj, "gt_items", file, line, problems, allow_empty=False)
    candidates = {}
    # Required lists first, then any other ``candidates*`` list present (checked the same way),
    # so a list from any retriever can be evaluated.
    for key in dict.fromkeys([*candidate_keys, *(k for k in obj if k.startswith("candidates"))]):
        ids = _id_list(obj, key, file, line, problems, allow_empty=False)
        if ids is not None:
            if len(set(ids)) != len(ids):
                problems.append(Problem(file, line, key, "lists an item ID more than once", "duplicate_candidate", "warning"))
            candidates[key] = ids
    context_items: tuple[str, ...] = ()
    if "context_items" in obj:
        ci = _id_list(obj, "context_items", file, line, problems, allow_empty=True)
        context_items = ci or ()
    gt = obj.get("gt")
    if gt is not None and not isinstance(gt, str):
        problems.append(Problem(file, line, "gt", f"must be a string, got {type(gt).__name__}", "mistyped_field"))
        gt = None
    if any(p.severity == "error" for p in problems):
        return None, problems
    conv = Conversation(
        conv_id=f"{Path(file).stem}:{line}",
        context=context,
        gt_items=gt_items,
        candidates=candidates,
        context_items=context_items,
        gt=gt,
    )
    return conv, problems


def read_conversations_checked(
    path: str | Path, candidate_keys: tuple[str, ...] = REQUIRED_CANDIDATE_KEYS
) -> tuple[list[Conversation], list[Problem]]:
    """Read a conversations file, returning the good records and every problem."""
    path = Path(path)
    convs: list[Conversation] = []
    problems: list[Problem] = []
    for lineno, obj, problem in iter_jsonl(path):
        if problem:
            problems.append(problem)
            continue
        conv, probs = parse_conversation(obj, str(path), lineno, candidate_keys)
        problems.extend(probs)
        if conv is not None:
            convs.append(conv)
    return convs, problems


def read_conversations(path: str | Path, candidate_keys: tuple[str, ...] = REQUIRED_CANDIDATE_KEYS) -> list[Conversation]:
    """Read a conversations file; raise :class:`DataError` on the first error.

    Args:
        path: A ``{train,valid,test}.jsonl`` file.
        candidate_keys: Candidate lists that must be present on every line.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: A line is malformed; the message names file, line and field.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"{path} is a directory; expected a conversations file ({{train,valid,test}}.jsonl)")
    if not path.is_file():
        raise InputMissing(f"conversations file not found: {path}")
    convs, problems = read_conversations_checked(path, candidate_keys)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(errors[0])
    return convs


# --------------------------------------------------------------------------- items


@dataclass
class _ItemDraft:
    title: str | None = None
    meta: dict = field(default_factory=dict)
    images: dict[str, ItemImage] = field(default_factory=dict)


def _check_description_map(value: object, file: str, line: int, problems: list[Problem]) -> dict[str, str]:
    if not isinstance(value, dict):
        problems.append(Problem(file, line, DESC_MAP_FIELD, f"must be an object mapping image file name to description, got {type(value).__name__}", "mistyped_field"))
        return {}
    out = {}
    for name, desc in value.items():
        if not isinstance(desc, str):
            problems.append(Problem(file, line, f"{DESC_MAP_FIELD}.{name}", f"description must be a string, got {type(desc).__name__}", "mistyped_field"))
            continue
        out[name] = desc
    return out


def _check_image_name(name: str, item_id: str, file: str, line: int, fld: str, problems: list[Problem]) -> bool:
    if _has_path(name):
        problems.append(Problem(file, line, fld, f"image name {name!r} must be a bare file name, not a path", "bad_image_name"))
        return False
    parsed = split_image_name(name)
    if parsed is None:
        problems.append(Problem(file, line, fld, f"image name {name!r} is not of the form '{{item_id}}_{{k}}.jpg'", "bad_image_name"))
        return False
    if parsed[0] != item_id:
        problems.append(Problem(file, line, fld, f"image name {name!r} does not belong to item {item_id!r}", "bad_image_name"))
        return False
    return True


def _has_path(name: str) -> bool:
    """A name with directory parts (``../x_0.jpg``, ``a/b_0.jpg``): it would resolve outside the image folders."""
    return "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute()


ImageDirs = Union[str, Path, Sequence[Union[str, Path]], None]


def image_dirs(base: Path, images_dir: ImageDirs) -> list[Path]:
    """The image folders to look in, in order (default ``<base>/images``)."""
    if images_dir is None:
        return [base / IMAGES_DIR]
    if isinstance(images_dir, (str, Path)):
        return [Path(images_dir)]
    return [Path(d) for d in images_dir] or [base / IMAGES_DIR]


def image_path(name: str, dirs: list[Path]) -> Path:
    """The first folder that has ``name`` (the release keeps training and validation images apart), else the first folder."""
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return dirs[0] / name


def _release_images(value: dict, item_id: str, file: str, line: int, problems: list[Problem]) -> dict[str, str]:
    """``{item_id}_{k}.jpg -> images[k].large`` of an item2meta_train.json entry (the release's image URLs)."""
    imgs = value.get("images")
    if imgs is None:
        return {}
    if not isinstance(imgs, list):
        problems.append(Problem(file, line, f"{item_id}.images", f"must be a list of image records, got {type(imgs).__name__}",
                                "mistyped_field", "warning"))
        return {}
    out = {}
    for k, rec in enumerate(imgs):
        url = rec.get("large") if isinstance(rec, dict) else None
        if isinstance(url, str) and url:
            out[f"{item_id}_{k}.jpg"] = url
        else:
            problems.append(Problem(file, line, f"{item_id}.images[{k}].large", "missing or not a string URL; this image is skipped",
                                    "mistyped_field", "warning"))
    return out


def read_items_checked(root: str | Path, images_dir: ImageDirs = None) -> tuple[dict[str, Item], list[Problem]]:
    """Read ``item2meta_train.json`` and ``item2meta_valid.jsonl`` under ``root`` (either may be absent).

    ``root`` may also be one of the two files itself. Items found in both are merged.

    Returns:
        Items by ID (images sorted by ``k``, primary first) and every problem found.
    """
    root = Path(root)
    if root.is_file():
        files = [root]
        base = root.parent
    else:
        files = [p for p in (root / ITEMS_TRAIN_FILE, root / ITEMS_VALID_FILE) if p.exists()]  # a directory is reported
        base = root
    dirs = image_dirs(base, images_dir)
    drafts: dict[str, _ItemDraft] = {}
    problems: list[Problem] = []
    if not files:
        problems.append(Problem(str(root), 0, "", f"no item metadata found (expected {ITEMS_TRAIN_FILE} and/or {ITEMS_VALID_FILE})", "missing_file"))

    for f in files:
        fs = str(f)
        if f.name.endswith(".jsonl"):
            for lineno, obj, problem in iter_jsonl(f):
                if problem:
                    problems.append(problem)
                    continue
                if not isinstance(obj, dict):
                    problems.append(Problem(fs, lineno, "", f"expected a JSON object, got {type(obj).__name__}", "mistyped_record"))
                    continue
                bad = False
                for key in ("title", "image_name"):
                    if key not in obj:
                        problems.append(Problem(fs, lineno, key, "missing required field", "missing_field"))
                        bad = True
                    elif not isinstance(obj[key], str):
                        problems.append(Problem(fs, lineno, key, f"must be a string, got {type(obj[key]).__name__}", "mistyped_field"))
                        bad = True
                for key in ("image", DESC_FIELD):
                    if key in obj and obj[key] is not None and not isinstance(obj[key], str):
                        problems.append(Problem(fs, lineno, key, f"must be a string, got {type(obj[key]).__name__}", "mistyped_field"))
                        bad = True
                if bad:
                    continue
                parsed = None if _has_path(obj["image_name"]) else split_image_name(obj["image_name"])
                if parsed is None and _has_path(obj["image_name"]):
                    problems.append(Problem(fs, lineno, "image_name", f"image name {obj['image_name']!r} must be a bare file "
                                                                      "name, not a path", "bad_image_name"))
                    continue
                if parsed is None:
                    problems.append(Problem(fs, lineno, "image_name", f"image name {obj['image_name']!r} is not of the form '{{item_id}}_{{k}}.jpg'", "bad_image_name"))
                    continue
                item_id = parsed[0]
                d = drafts.setdefault(item_id, _ItemDraft())
                d.title = d.title or obj["title"]
                d.meta.update({k: v for k, v in obj.items() if k not in ("title", "image_name", "image", DESC_FIELD)})
                d.images[obj["image_name"]] = ItemImage(
                    obj["image_name"], image_path(obj["image_name"], dirs), obj.get(DESC_FIELD), obj.get("image")
                )
        else:
            for lineno, item_id, value, problem in iter_json_object(f):
                if problem:
                    problems.append(problem)
                    continue
                if not isinstance(value, dict):
                    problems.append(Problem(fs, lineno, item_id, f"item metadata must be an object, got {type(value).__name__}", "mistyped_record"))
                    continue
                if "title" not in value:
                    problems.append(Problem(fs, lineno, f"{item_id}.title", "missing required field", "missing_field"))
                    continue
                if not isinstance(value["title"], str):
                    problems.append(Problem(fs, lineno, f"{item_id}.title", f"must be a string, got {type(value['title']).__name__}", "mistyped_field"))
                    continue
                descs = _check_description_map(value.get(DESC_MAP_FIELD, {}), fs, lineno, problems)
                d = drafts.setdefault(item_id, _ItemDraft())
                d.title = d.title or value["title"]
                d.meta.update({k: v for k, v in value.items() if k not in ("title", DESC_MAP_FIELD, "images")})
                urls = _release_images(value, item_id, fs, lineno, problems)
                for name, desc in descs.items():
                    if _check_image_name(name, item_id, fs, lineno, f"{item_id}.{DESC_MAP_FIELD}", problems):
                        d.images[name] = ItemImage(name, image_path(name, dirs), desc, urls.get(name))
                for name, url in urls.items():  # images with a URL but no description (the release's images[k].large)
                    if name not in d.images:
                        d.images[name] = ItemImage(name, image_path(name, dirs), None, url)

    items = {}
    for item_id, d in drafts.items():
        imgs = sorted(d.images.values(), key=lambda im: split_image_name(im.name)[1])
        items[item_id] = Item(item_id, d.title or "", tuple(imgs), d.meta)
    return items, problems


class Catalog:
    """The items of a dataset, by ID.

    Build it with :meth:`load` (from the layout on disk) or from ``Item`` records.
    """

    def __init__(self, items: dict[str, Item] | list[Item]):
        if isinstance(items, dict):
            self.items = dict(items)
        else:
            self.items = {it.item_id: it for it in items}

    @classmethod
    def load(cls, root: str | Path, images_dir: ImageDirs = None) -> "Catalog":
        """Read the items under ``root``; raise :class:`DataError` on the first error."""
        from lavic_ray import storage

        items, problems = read_items_checked(storage.fetch(root), images_dir)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise DataError(errors[0])
        return cls(items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.items

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise UnknownKey(f"item {item_id!r} is not in the catalog ({len(self.items)} items)") from None

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items.values())

    def ids(self) -> list[str]:
        return list(self.items)

    def titles(self, ids: list[str] | tuple[str, ...]) -> list[str]:
        return [self[i].title for i in ids]

    def missing(self, ids) -> list[str]:
        """The IDs among ``ids`` the catalog lacks, in order, without repeats."""
        seen, out = set(), []
        for i in ids:
            if i not in self.items and i not in seen:
                seen.add(i)
                out.append(i)
        return out


def find_conversation_files(root: str | Path) -> dict[str, dict[str, Path]]:
    """``{domain: {split: path}}`` for every ``<root>/<domain>/<split>.jsonl`` present."""
    root = Path(root)
    out: dict[str, dict[str, Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        splits = {s: d / f"{s}.jsonl" for s in SPLITS if (d / f"{s}.jsonl").exists()}  # a directory there is reported
        if splits:
            out[d.name] = splits
    return out
