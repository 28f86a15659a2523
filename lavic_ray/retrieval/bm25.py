"""Sparse retrieval with BM25 (the bm25s library, English stop words, Snowball stemming)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from lavic_ray.retrieval.base import Retriever

_WORD = re.compile(r"(?u)\b\w\w+\b")


def _bm25s():
    import bm25s

    # bm25s pins its logger to DEBUG at import; let the application's logging decide
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def _stemmer(language: str | None):
    if not language:
        return None
    try:
        import Stemmer
    except ImportError:  # PyStemmer is a dependency; without it BM25 still works unstemmed
        return None
    return Stemmer.Stemmer(language)


class BM25Retriever(Retriever):
    """BM25 (Lucene variant) over item texts.

    Args:
        k1: Term-frequency saturation.
        b: Length normalisation.
        stem: Snowball stemmer language, or None for no stemming.
    """

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stem: str | None = "english"):
        super().__init__()
        self.k1, self.b, self.stem = k1, b, stem
        self._bm25 = None
        self._stemmer = _stemmer(stem)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        # Our own tokenisation (the bm25s one, minus its growing vocabulary), so that
        # queries never mutate a loaded index: lowercase words, stop words out, stemmed.
        from bm25s.stopwords import STOPWORDS_EN

        stop = set(STOPWORDS_EN)
        out = []
        for text in texts:
            words = [w for w in _WORD.findall(text.lower()) if w not in stop]
            out.append(self._stemmer.stemWords(words) if self._stemmer else words)
        return out

    def _build(self, texts: list[str]) -> None:
        self._bm25 = _bm25s().BM25(k1=self.k1, b=self.b)
        corpus = self._tokens(texts)
        # bm25s refuses an empty document; an empty title still needs a row
        corpus = [t if t else ["\u2205"] for t in corpus]
        self._bm25.index(corpus, show_progress=False)

    def _score_all(self, queries: list[str]) -> np.ndarray:
        n = len(self.item_ids)
        out = np.zeros((len(queries), n), dtype=np.float32)
        for q, toks in enumerate(self._tokens(queries)):
            ids = self._bm25.get_tokens_ids(toks)
            if ids:
                out[q] = self._bm25.get_scores_from_ids(ids)
        return out

    def _save(self, d: Path) -> None:
        self._bm25.save(str(d / "bm25"))

    def _meta(self) -> dict:
        return {"k1": self.k1, "b": self.b, "stem": self.stem}

    @classmethod
    def _from_saved(cls, d: Path, meta: dict) -> "BM25Retriever":
        r = cls(k1=meta["k1"], b=meta["b"], stem=meta["stem"])
        r._bm25 = _bm25s().BM25.load(str(d / "bm25"))
        return r

