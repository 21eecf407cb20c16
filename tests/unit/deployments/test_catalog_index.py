"""A replica's catalog index: items written in one batch search exactly as items written
one by one, a replaced item loses its vectors, and lexical, vector and hybrid searches
rank what each half says."""

from __future__ import annotations

import numpy as np

from deployments.pipelines.catalog_index import CatalogIndex
from models.example_catalog import generate
from stores.catalog import Item

QUERIES = ["waterproof trail running shoe", "coffee", "red", "sandal cork"]


def unit(values: list[float]) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_a_batch_searches_like_items_written_one_by_one() -> None:
    items = generate(400, seed=3).items
    one_by_one, batch = CatalogIndex(), CatalogIndex()
    for item in items:
        one_by_one.upsert(item)
    assert batch.upsert_many(items) == list(range(len(items)))
    assert len(batch) == len(one_by_one) == len(items)
    filters = {"in_stock": True}
    for text in [*QUERIES, items[7].text["title"], str(items[9].attributes["model"])]:
        for f in (None, filters):
            want = one_by_one.search("", None, text, 10, f, True)
            got = batch.search("", None, text, 10, f, True)
            assert [(h.item.id, round(h.score, 9)) for h in got] == [
                (h.item.id, round(h.score, 9)) for h in want
            ]
            assert got, text


def test_the_last_of_an_id_given_twice_wins_and_replacing_drops_vectors() -> None:
    index = CatalogIndex()
    index.upsert_many([Item("a", {"title": "red kettle"}), Item("b", {"title": "blue kettle"})])
    index.set_vectors("m/v1", {"a": unit([1, 0]), "b": unit([0, 1])})
    assert index.complete("m/v1")
    slots = index.upsert_many([Item("a", {"title": "green pan"}), Item("a", {"title": "teapot"})])
    assert slots == [0, 0]
    assert len(index) == 2
    assert [i.id for i in index.missing("m/v1")] == ["a"]
    assert [h.item.id for h in index.search("", None, "teapot", 5, None, True)] == ["a"]
    assert index.search("", None, "green pan", 5, None, True) == []


def test_vector_lexical_and_hybrid_rankings() -> None:
    index = CatalogIndex()
    index.upsert_many(
        [
            Item("shoe", {"title": "Trail running shoe", "description": "Model AB-1234."}),
            Item("boot", {"title": "Hiking boot", "description": "Model CD-5678."}),
            Item("pan", {"title": "Frying pan", "description": "Model EF-9012."}),
        ]
    )
    index.set_vectors(
        "m/v1", {"shoe": unit([1, 0.2, 0]), "boot": unit([1, 0.6, 0]), "pan": unit([0, 0, 1])}
    )
    query = unit([1, 0.7, 0])  # nearest the boot
    vector = index.search("m/v1", query, "ab-1234", 2, None, False)
    assert [h.item.id for h in vector] == ["boot", "shoe"]
    lexical = index.search("m/v1", None, "ab-1234", 2, None, True)
    assert [h.item.id for h in lexical] == ["shoe"]
    hybrid = index.search("m/v1", query, "ab-1234", 2, None, True)
    assert [h.item.id for h in hybrid] == ["shoe", "boot"]  # the exact code outweighs
