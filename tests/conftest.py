"""Shared fixtures. Nothing here downloads anything: SBERT is the packaged copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reddit_amazon"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The real Reddit-Amazon validation files, read by path (never copied)."""
    if not REFERENCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference data missing at {REFERENCE}")
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def sbert():
    from lavic_ray.retrieval import SBERTRetriever

    return SBERTRetriever()


@pytest.fixture(scope="session")
def synth_cfg():
    from lavic_ray.config import SynthConfig

    return SynthConfig(seed=7, items=192, conversations=200)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory, synth_cfg, sbert) -> Path:
    """One small synthetic catalog shared by the tests that only read it."""
    from lavic_ray.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(synth_cfg, root, retriever=sbert)
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny random LLaVA-Next, built and saved once per session."""
    from lavic_ray.model.checkpoints import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture()
def tiny(tiny_dir):
    from lavic_ray.model.checkpoints import load_checkpoint

    return load_checkpoint(str(tiny_dir))


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory) -> Path:
    """A checkpoint shaped like llava-v1.6-mistral-7b (336 px / patch 14 views, the real pinpoints, image token
    32000, a Mistral text model, a SentencePiece tokenizer with byte fallback), random and tiny, built once."""
    pytest.importorskip("sentencepiece", reason="the Mistral-shaped test tokenizer is trained with sentencepiece (dev extra)")
    from lavic_ray.model.checkpoints import build_mistral_like

    return build_mistral_like(tmp_path_factory.mktemp("mistral"), seed=0)
