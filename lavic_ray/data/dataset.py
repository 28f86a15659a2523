"""A dataset in the LaViC layout: every path of it, in one place.

:class:`Dataset` owns where a dataset's files are (item metadata, images, the
conversation splits of its domain, the synthetic catalog's attribute truth) and
loads them; nothing else builds a dataset path by hand. Artifacts a run writes are
:class:`lavic_ray.artifacts.Artifacts`' business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lavic_ray.data.layout import (
    ITEMS_TRAIN_FILE,
    ITEMS_VALID_FILE,
    MANIFEST_FILE,
    SPLITS,
    TRUTH_FILE,
    Catalog,
    image_dirs,
    read_conversations,
)
from lavic_ray.data.records import REQUIRED_CANDIDATE_KEYS, Conversation
from lavic_ray.errors import InputMissing, InvalidInput


@dataclass(frozen=True)
class Dataset:
    """A dataset root and the domain whose conversations are used.

    Attributes:
        root: The directory holding ``item2meta_train.json`` / ``item2meta_valid.jsonl``,
            ``images/`` and ``<domain>/{train,valid,test}.jsonl``.
        domain: The conversation domain (``all_beauty``, ``amazon_home``, ``synthetic`` ...).
        images_dir: The image folder(s), looked in in order, when not ``root/images``.
        descriptions: A ``lavic describe`` output whose descriptions replace the metadata's.
    """

    root: Path
    domain: str
    images_dir: Path | tuple[Path, ...] | None = None
    descriptions: Path | None = None

    @classmethod
    def from_config(cls, dc) -> "Dataset":
        """From a :class:`lavic_ray.config.DatasetConfig` whose ``root`` is set."""
        if not dc.root:
            raise InvalidInput("dataset.root is not set: give the dataset's directory (--catalog DIR or --set dataset.root=DIR)")
        from lavic_ray import storage

        dirs = None if not dc.images_dir else (Path(dc.images_dir) if isinstance(dc.images_dir, str)
                                               else tuple(Path(d) for d in dc.images_dir))
        # a catalog made under an object-store root (the synthetic one): downloaded once to this node's mirror
        return cls(storage.fetch(dc.root), dc.domain, dirs,
                   storage.fetch(dc.descriptions) if dc.descriptions else None)

    # ------------------------------------------------------------------ paths
    @property
    def items_train(self) -> Path:
        return self.root / ITEMS_TRAIN_FILE

    @property
    def items_valid(self) -> Path:
        return self.root / ITEMS_VALID_FILE

    @property
    def images(self) -> Path:
        """The first image folder (where fetched images go)."""
        return image_dirs(self.root, self.images_dir)[0]

    @property
    def truth(self) -> Path:
        """The synthetic catalog's attribute truth (absent for real data)."""
        return self.root / TRUTH_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise InvalidInput(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return self.root / self.domain / f"{name}.jsonl"

    # ------------------------------------------------------------------ checks
    def has_items(self) -> bool:
        return self.items_train.is_file() or self.items_valid.is_file()

    def check(self) -> "Dataset":
        """Fail with a clear message when the root is not a dataset."""
        if not self.root.is_dir():
            raise InputMissing(f"dataset root {self.root} is not a directory")
        if not self.has_items():
            raise InputMissing(f"{self.root} holds no item metadata ({ITEMS_TRAIN_FILE} or {ITEMS_VALID_FILE})")
        return self

    # ------------------------------------------------------------------ loading
    def catalog(self) -> Catalog:
        """The items, with ``descriptions`` applied when given."""
        catalog = Catalog.load(self.root, self.images_dir)
        if self.descriptions is not None:
            from lavic_ray.data.descriptions import apply_descriptions

            catalog = apply_descriptions(catalog, self.descriptions)
        return catalog

    def conversations(self, split: str, candidate_keys: tuple[str, ...] = REQUIRED_CANDIDATE_KEYS,
                      required: bool = True) -> list[Conversation]:
        """A split's conversations; an absent optional split is empty."""
        path = self.split(split)
        if not path.is_file():
            if required:
                raise InputMissing(f"conversations file not found: {path} (dataset.domain is {self.domain!r})")
            return []
        return read_conversations(path, candidate_keys)

    def attribute_vocabulary(self) -> dict[str, dict[str, list[str]]] | None:
        """For a synthetic catalog: per decisive attribute and value, the words a description names it by
        (``synth_manifest.json``; a manifest from before the vocabulary was written: the default scheme's).
        None for real data."""
        if not self.manifest.is_file():
            return None
        data = json.loads(self.manifest.read_text())
        if "vocabulary" in data:
            return data["vocabulary"]
        from lavic_ray.data.synthetic import PRODUCTS

        return {a: {v: list(w) for v, w in vals.items()} for a, vals in PRODUCTS.vocabulary.items()}

    def attribute_truth(self) -> dict[str, dict] | None:
        """``item_id -> {attribute: value, ..., "pool": split}`` for a synthetic catalog; None for real data."""
        if not self.truth.is_file():
            return None
        data = json.loads(self.truth.read_text())
        if "items" not in data:
            raise InvalidInput(f"{self.truth}: expected an object with 'items'")
        return data["items"]
