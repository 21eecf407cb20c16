"""The example catalog and its labelled queries: the same seed gives the same bytes, sizes
are exact, items have the structure search needs, and every label follows it."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from models.example_catalog import (
    Catalog,
    generate,
    item_record,
    leaves,
    main,
    read_items,
    write_items,
)
from models.example_catalog_data import DEPARTMENTS, SHADES
from models.example_queries import Query, make_queries, read_queries, write_queries
from tests.conftest import REPO_ROOT

ITEMS = 4000


@functools.cache
def catalog() -> Catalog:
    return generate(ITEMS, seed=0)


@functools.cache
def queries() -> list[Query]:
    return make_queries(catalog(), 300, seed=0)


def records(c: Catalog) -> list[str]:
    return [json.dumps(item_record(i), sort_keys=True) for i in c.items]


def test_the_same_seed_gives_the_same_catalog_and_queries() -> None:
    again = generate(ITEMS, seed=0)
    assert records(again) == records(catalog())
    assert make_queries(again, 300, seed=0) == queries()
    assert records(generate(ITEMS, seed=1)) != records(catalog())


def test_the_output_does_not_depend_on_the_interpreters_hash_seed(tmp_path: Path) -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed / "products.jsonl"
        subprocess.run(
            [sys.executable, "-m", "models.example_catalog", "--out", str(out), "--items", "500"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            check=True,
            capture_output=True,
        )
        digests.add((out.read_bytes(), out.with_name("queries.jsonl").read_bytes()))
    assert len(digests) == 1


@pytest.mark.parametrize("n", [len(leaves()), 1000, 3001])
def test_the_catalog_has_exactly_the_items_asked_for(n: int) -> None:
    c = generate(n)
    assert len(c.items) == n
    assert len({i.id for i in c.items}) == n
    assert {p.leaf.name for p in c.products} == {leaf.name for _, leaf in leaves()}


def test_a_catalog_smaller_than_the_leaf_count_is_refused() -> None:
    with pytest.raises(ValueError, match="one per leaf category"):
        generate(len(leaves()) - 1)


def test_category_tree_and_brands() -> None:
    assert 40 <= len(leaves()) <= 80
    assert len(DEPARTMENTS) >= 6
    for dept in DEPARTMENTS:
        assert len(dept.brands) >= 5
    by_category = Counter(str(i.attributes["category"]) for i in catalog().items)
    assert all(re.fullmatch(r"[^>]+ > [^>]+", c) for c in by_category)
    assert len(by_category) == len(leaves())
    # each leaf has several brands, each department's brands are its own
    for p in catalog().products:
        assert p.brand in next(d.brands for d in DEPARTMENTS if d.name == p.department)


def test_items_carry_text_and_typed_attributes() -> None:
    for p in catalog().products:
        item, attrs = p.item, p.item.attributes
        assert set(item.text) == {"title", "description", "brand"}
        assert item.text["brand"] == p.brand
        assert item.text["title"].startswith(p.brand)
        assert p.model in item.text["title"]
        assert p.code in item.text["description"]
        assert attrs["category"] == p.category
        assert attrs["brand"] == p.brand
        assert attrs["model"] == p.code
        assert isinstance(attrs["price"], float)
        lo, hi = p.leaf.price
        assert lo <= attrs["price"] <= hi * 1.1 + 1
        assert isinstance(attrs["in_stock"], bool)
        assert attrs["color"] in p.leaf.colors
        assert any(shade in item.text["title"] for shade in SHADES[str(attrs["color"])])
        tags = attrs["tags"]
        assert isinstance(tags, list)
        assert set(tags) <= set(p.leaf.features)


def test_variants_share_a_model_number_and_models_do_not() -> None:
    by_code: dict[str, set[tuple[str, str, str]]] = {}
    for p in catalog().products:
        by_code.setdefault(p.code, set()).add((p.brand, p.model, p.leaf.name))
    assert all(len(models) == 1 for models in by_code.values())
    sizes = Counter(p.code for p in catalog().products).values()
    assert max(sizes) > 1  # colourways and sizes of one model
    assert len(by_code) > ITEMS / 10


def test_stock_and_prices_vary() -> None:
    products = catalog().products
    in_stock = sum(bool(p.item.attributes["in_stock"]) for p in products) / len(products)
    assert 0.8 < in_stock < 0.95
    prices = {p.item.attributes["price"] for p in products}
    assert len(prices) > 100


def test_items_round_trip_through_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "products.jsonl"
    write_items(catalog().items[:50], path)
    assert read_items(path) == catalog().items[:50]
    path.write_text(path.read_text() + '{"id": 7, "text": {}}\n')
    with pytest.raises(ValueError, match=r"products.jsonl:51: not a catalog item"):
        read_items(path)


_X = '"text": {"title": "x"}'


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (f'{{"id": "a", {_X}, "attributes": {{"color": null}}}}', "attributes.color"),
        (f'{{"id": "a", {_X}, "attributes": {{"size": NaN}}}}', "attributes.size"),
        (f'{{"id": "a", {_X}, "attributes": {{"n": 1{"0" * 30}}}}}', "attributes.n"),
        (f'{{"id": "a", {_X}, "attributes": []}}', "attributes"),
        ('{"id": "", "text": {"title": "x"}}', "id"),
        ('{"id": "..", "text": {"title": "x"}}', "id"),
        ('{"id": "a", "text": {}}', "text"),
    ],
)  # fmt: skip
def test_an_item_the_api_refuses_is_named_by_line_and_field(
    tmp_path: Path, line: str, field: str
) -> None:
    """What `servekit index build --items` reads: a snapshot never holds an item the
    items route would refuse (no replica could index it)."""
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "ok", "text": {"title": "x"}}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"items.jsonl:2: not a catalog item \({field}: "):
        read_items(path)


def test_the_command_writes_the_catalog_and_its_queries(tmp_path: Path) -> None:
    out = tmp_path / "catalog" / "products.jsonl"
    assert main(["--out", str(out), "--items", "600", "--queries", "40"]) == 0
    assert read_items(out) == generate(600).items
    assert read_queries(out.with_name("queries.jsonl")) == make_queries(generate(600), 40)


# ---- queries -------------------------------------------------------------------------


def test_queries_come_in_every_kind_split_evenly() -> None:
    counts = Counter((q.kind, q.split) for q in queries())
    kinds = {"intent", "attribute", "brand", "name", "code"}
    assert {kind for kind, _ in counts} == kinds
    for kind in kinds:
        assert abs(counts[kind, "dev"] - counts[kind, "test"]) <= 1
    assert len(queries()) == 300
    assert len({q.query.lower() for q in queries()}) == 300
    assert len({q.id for q in queries()}) == 300


def test_labels_point_at_items_and_each_query_has_an_exact_answer() -> None:
    ids = {i.id for i in catalog().items}
    for q in queries():
        assert set(q.relevant) <= ids
        assert set(q.relevant.values()) <= {1, 2, 3}
        assert 3 in q.relevant.values()


def test_intent_and_attribute_queries_are_not_copied_from_titles() -> None:
    titles = [i.text["title"].lower() for i in catalog().items]
    for q in queries():
        if q.kind in ("intent", "attribute"):
            assert not any(q.query.lower() in t for t in titles), q.query


def test_relevance_follows_the_catalog_structure() -> None:
    by_id = {p.item.id: p for p in catalog().products}
    for q in queries():
        best = [by_id[i] for i, g in q.relevant.items() if g == 3]
        if q.kind in ("intent", "attribute", "brand"):
            assert len({p.leaf.name for p in best}) == 1, q.query
        if q.kind == "intent":  # the whole leaf is exact, related leaves partial
            leaf = best[0].leaf
            assert len(best) == sum(p.leaf == leaf for p in catalog().products)
            assert all(by_id[i].leaf.name in leaf.related for i, g in q.relevant.items() if g == 1)
        if q.kind == "brand":
            assert len({p.brand for p in best}) == 1
            assert best[0].brand.lower() in q.query.lower()
        if q.kind == "code":
            (code,) = {p.code for p in best}
            assert len(best) == sum(p.code == code for p in catalog().products)
            compact = re.sub(r"[\W_]", "", code).lower()
            assert compact in re.sub(r"[\W_]", "", q.query).lower()
        if q.kind == "attribute":  # exact answers share the colour or a feature asked for
            colours = {p.color for p in best}
            assert len(colours) == 1 or len(set.intersection(*(set(p.tags) for p in best)))


def test_an_asked_colour_separates_exact_answers_from_partial_ones() -> None:
    by_id = {p.item.id: p for p in catalog().products}
    checked = 0
    for q in queries():
        colours = [c for c in SHADES if c in q.query.split()]
        if q.kind != "attribute" or len(colours) != 1:
            continue
        leaf = next(by_id[i].leaf for i, g in q.relevant.items() if g == 3)
        for item_id, grade in q.relevant.items():
            p = by_id[item_id]
            if grade == 3:
                assert p.color == colours[0]
            if p.leaf == leaf and p.color != colours[0]:
                assert grade < 3
            if p.leaf != leaf:
                assert grade == 1
                assert p.color == colours[0]
        checked += 1
    assert checked >= 10


def test_queries_round_trip_and_bad_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    write_queries(queries()[:20], path)
    assert read_queries(path) == queries()[:20]
    path.write_text('{"id": "a", "query": "red shoes", "relevant": {"p1": 2}}\n')
    assert read_queries(path) == [Query("a", "red shoes", {"p1": 2}, "test", "")]
    for bad in (
        '{"id": "a", "query": "x", "relevant": {"p1": 4}}',
        '{"id": "a", "query": "x", "relevant": {"p1": true}}',
        '{"id": "a", "query": "", "relevant": {}}',
        '{"id": "a", "query": "x", "relevant": {}, "split": "train"}',
        '{"query": "x"}',
    ):
        path.write_text('{"id": "b", "query": "y", "relevant": {"p2": 1}}\n' + bad + "\n")
        with pytest.raises(ValueError, match=r"queries.jsonl:2: not a labelled query"):
            read_queries(path)
