"""The stage-2 variants: the paper's method and its ablations, in one table.

Every place that lists variants (the config's ``job.variant``, the workflow, the
evaluation methods, the quickstart and its report) reads :data:`VARIANTS`; a new variant
is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Variant:
    """One stage-2 variant.

    Attributes:
        name: Its name (also the evaluation method's name).
        table: The item embedding table its prompts read: ``distilled`` (the stage-1 vision
            adapter), ``undistilled`` (the vision side before stage 1), or None (no vectors).
        summary: One line for reports.
    """

    name: str
    table: Literal["distilled", "undistilled"] | None
    summary: str

    @property
    def use_images(self) -> bool:
        return self.table is not None


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("lavic", "distilled", "stage 2 over the distilled vectors (the full method)"),
    Variant("lavic-title-only", None, "the same stage 2 without visual vectors (titles only)"),
    Variant("lavic-no-distill", "undistilled", "the same stage 2 over vectors from the vision side before stage 1"),
)}

#: The variant names, for typed config fields.
VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]

#: Item embedding tables the variants read.
TABLES = tuple(dict.fromkeys(v.table for v in VARIANTS.values() if v.table))
