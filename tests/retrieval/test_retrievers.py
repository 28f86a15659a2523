"""SBERT (the real all-MiniLM-L6-v2 weights) and BM25 on a small catalog."""

import numpy as np
import pytest

from lavic_ray.data.records import Item
from lavic_ray.retrieval import BM25Retriever, Retriever, SBERTRetriever, item_text, make_retriever

ITEMS = [
    ("B000000001", "Ceramic Coffee Mug with Comfort Grip Handle, 12 oz"),
    ("B000000002", "Canvas Laptop Backpack with Padded Sleeve, 30L"),
    ("0306406152", "Cotton Crew Neck T-Shirt, Unisex Size M"),
    ("B000000004", "Glass Flower Vase for Home Decor, 10 inch"),
    ("B000000005", "Windproof Travel Umbrella, Auto Open Close"),
    ("B000000006", "Running Sneaker with Cushioned Insole, Size 9"),
]
IDS = [i for i, _ in ITEMS]
TITLES = [t for _, t in ITEMS]
QUERIES = {
    "I spill coffee every morning and need a new mug": "B000000001",
    "my kid needs a backpack for school, something that fits a laptop": "B000000002",
    "looking for a tee shirt in cotton": "0306406152",
    "it always rains here, any umbrella that survives wind?": "B000000005",
}


@pytest.fixture(params=["sbert", "bm25"])
def retriever(request, sbert):
    if request.param == "sbert":
        r = SBERTRetriever(batch_size=2)  # shares the loaded encoder with the session fixture
    else:
        r = BM25Retriever()
    return r.index(IDS, TITLES)


def test_search_finds_the_item(retriever):
    hits = retriever.search(list(QUERIES), k=3)
    for (query, want), top in zip(QUERIES.items(), hits):
        assert top[0][0] == want, (retriever.kind, query, top)
        assert len(top) == 3
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_score_reranks_a_given_list(retriever):
    cands = [["B000000004", "B000000001", "B000000006"], ["B000000005", "B000000002"]]
    scores = retriever.score(["a coffee mug please", "backpack for a laptop"], cands)
    assert [len(s) for s in scores] == [3, 2]
    assert int(np.argmax(scores[0])) == 1 and int(np.argmax(scores[1])) == 1


def test_restricted_search(retriever):
    hits = retriever.search(["coffee mug"], k=10, restrict_to=["B000000004", "B000000006"])[0]
    assert {i for i, _ in hits} == {"B000000004", "B000000006"}


def test_save_and_load_round_trip(retriever, tmp_path):
    before = retriever.search(list(QUERIES), k=4)
    loaded = Retriever.load(retriever.save(tmp_path / "idx"))
    assert type(loaded) is type(retriever) and loaded.item_ids == IDS
    after = loaded.search(list(QUERIES), k=4)
    assert [[i for i, _ in h] for h in after] == [[i for i, _ in h] for h in before]
    np.testing.assert_allclose([[s for _, s in h] for h in after], [[s for _, s in h] for h in before], rtol=1e-5)


def test_clear_errors(retriever, tmp_path):
    with pytest.raises(KeyError, match="B0NOTTHERE"):
        retriever.score(["mug"], [["B000000001", "B0NOTTHERE"]])
    with pytest.raises(FileNotFoundError):
        Retriever.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="unique"):
        make_retriever(retriever.kind).index(["a", "a"], ["x", "y"])
    with pytest.raises(RuntimeError, match="no index"):
        make_retriever(retriever.kind).search(["q"])
    with pytest.raises(ValueError, match="unknown retriever"):
        make_retriever("tfidf")


def test_sbert_embeddings_are_normalised(sbert):
    emb = sbert.encode(["a", "a longer sentence about mugs"])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)


def test_bm25_empty_query_scores_zero():
    r = BM25Retriever().index(IDS, TITLES)
    assert r.score(["the of and"], [IDS[:2]]) == [[0.0, 0.0]]


def test_item_text_fields():
    from lavic_ray.data.records import ItemImage

    it = Item("B000000001", "Mug", (ItemImage("B000000001_0.jpg", None, "A red mug."),))
    assert item_text(it) == "Mug"
    assert item_text(it, "title+description") == "Mug. A red mug."
    with pytest.raises(ValueError):
        item_text(it, "brand")
