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


def test_items_that_come_and_go_reuse_slots_only_after_searches_ended() -> None:
    """Listings that expire (an id never seen again): the slots, and with them filter
    masks and attribute columns, grew with every id ever written."""
    now = [1000.0]
    index = CatalogIndex()
    index.clock = lambda: now[0]
    live: dict[str, int] = {}
    for n in range(2000):
        item = Item(f"sku-{n}", {"title": f"kettle model{n}"}, {"price": n})
        index.upsert_many([item])
        index.set_vectors("m/v1", {item.id: unit([1, n % 7, 1])})
        live[item.id] = n
        if len(live) > 50:
            gone = min(live, key=live.__getitem__)
            assert index.delete(gone)
            del live[gone]
        now[0] += 1.0  # a new item a second
    assert len(index) == 50
    assert index._next <= 50 + 61  # live items and those freed within the last minute
    assert index.complete("m/v1")
    assert index.search("", None, "model1999", 3, None, True)[0].item.id == "sku-1999"
    found = {h.item.id for h in index.search("", None, "model1000", 60, None, True)}
    assert found == set(live)  # by "model" alone: the item of 1000 is gone
    cheap = index.search("m/v1", unit([1, 0, 1]), "", 60, {"price": {"lt": 1960}}, False)
    assert sorted(h.item.id for h in cheap) == sorted(i for i, n in live.items() if n < 1960)
    # A slot freed just now is not given out: a search may still map its answer.
    slot = index.slots["sku-1999"]
    index.delete("sku-1999")
    index.upsert(Item("fresh", {"title": "teapot"}))
    assert index.slots["fresh"] != slot
