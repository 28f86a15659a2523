"""`lavic validate`: check a dataset in the LaViC layout and report every problem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lavic_ray.data.images import check_image
from lavic_ray.data.layout import (
    find_conversation_files,
    image_dirs,
    read_conversations_checked,
    read_items_checked,
)
from lavic_ray.data.records import REQUIRED_CANDIDATE_KEYS, Problem

ImageCheck = Literal["none", "header", "decode"]


@dataclass
class ValidationReport:
    """Everything :func:`validate_root` found.

    Attributes:
        root: The dataset root.
        problems: Every problem, in file order.
        counts: Records read, by kind (``items``, ``images``, ``conversations:<domain>/<split>``).
    """

    root: str
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems).most_common())

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts": self.counts,
            "problems_by_kind": self.by_kind(),
            "problems": [p.to_dict() for p in self.problems],
        }

    def render(self, max_problems: int = 50) -> str:
        lines = [str(p) for p in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"... {len(self.problems) - max_problems} more (use --json or --max-problems for all)")
        lines.append("read: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        if self.problems:
            lines.append("problems by kind: " + ", ".join(f"{k} {v}" for k, v in self.by_kind().items()))
        verdict = "OK" if self.ok else "INVALID"
        lines.append(f"{verdict}: {len(self.errors)} errors, {len(self.warnings)} warnings in {self.root}")
        return "\n".join(lines)


def validate_root(
    root: str | Path,
    images_dir: str | Path | None = None,
    images: ImageCheck = "header",
    candidate_keys: tuple[str, ...] = REQUIRED_CANDIDATE_KEYS,
) -> ValidationReport:
    """Validate a dataset root in the LaViC layout.

    Checks malformed JSON, missing and mistyped fields, empty candidate lists,
    candidate / ground-truth / context IDs unknown to the catalog, and images that
    are missing or unreadable. A missing or unreadable image is a warning: the
    pipeline goes on with the item's defined fallback.

    Args:
        root: Directory holding the item metadata files and ``<domain>/<split>.jsonl``.
        images_dir: Where ``{item_id}_{k}.jpg`` files are (default ``<root>/images``).
        images: ``none`` skips image checks, ``header`` opens each file and
            verifies its structure, ``decode`` decodes every pixel (slow, thorough).
        candidate_keys: Candidate lists each conversation must have (others are
            checked when present).
    """
    root = Path(root)
    report = ValidationReport(str(root))
    if not root.is_dir():
        report.problems.append(Problem(str(root), 0, "", "dataset root is not a directory", "missing_file"))
        return report
    items, problems = read_items_checked(root, images_dir)
    report.problems.extend(problems)
    report.counts["items"] = len(items)

    if images != "none":
        dirs = image_dirs(root, images_dir)
        n_images = 0
        if not any(d.is_dir() for d in dirs):
            report.problems.append(Problem(", ".join(map(str, dirs)), 0, "", "images directory not found; every item falls "
                                           "back to its no-image vectors", "missing_image", "warning"))
        else:
            for item in items.values():
                if not item.images:
                    report.problems.append(Problem(str(root), 0, item.item_id, "item has no image", "missing_image", "warning"))
                for im in item.images:
                    n_images += 1
                    reason = check_image(im.path, decode=images == "decode")
                    if reason:
                        kind = "missing_image" if reason == "missing" else "unreadable_image"
                        report.problems.append(Problem(str(im.path), 0, item.item_id, f"image {reason}", kind, "warning"))
        report.counts["images"] = n_images

    known = items.keys()
    for domain, splits in find_conversation_files(root).items():
        for split, path in splits.items():
            convs, problems = read_conversations_checked(path, candidate_keys)
            report.problems.extend(problems)
            report.counts[f"conversations:{domain}/{split}"] = len(convs)
            if not convs and not problems:
                report.problems.append(Problem(str(path), 0, "", "the file holds no conversations", "empty_file", "warning"))
            for conv in convs:
                line = int(conv.conv_id.rsplit(":", 1)[1])
                fields = [("gt_items", conv.gt_items), ("context_items", conv.context_items)]
                fields += list(conv.candidates.items())
                for fld, ids in fields:
                    unknown = [i for i in ids if i not in known]
                    if unknown:
                        report.problems.append(Problem(
                            str(path), line, fld,
                            f"{len(unknown)} item ID(s) unknown to the catalog: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
                            "unknown_item",
                        ))
    if not any(k.startswith("conversations:") for k in report.counts):
        report.problems.append(Problem(str(root), 0, "", "no conversation files found (expected <root>/<domain>/{train,valid,test}.jsonl)", "missing_file", "warning"))
    return report
