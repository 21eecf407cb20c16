"""Attribute filters over a catalog's columns."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.pipelines.filters import AttributeColumns, FilterError

ITEMS = {
    0: {"category": "shoes", "price": 50, "tags": ["trail", "waterproof"], "in_stock": True},
    1: {"category": "shoes", "price": 120.5, "tags": ["road"], "in_stock": False},
    2: {"category": "socks", "price": 9, "tags": ["trail"], "in_stock": True},
    3: {"category": "shoes", "brand": "Acme"},
}


@pytest.fixture
def columns() -> AttributeColumns:
    cols = AttributeColumns()
    for slot, attrs in ITEMS.items():
        cols.set(slot, attrs)  # type: ignore[arg-type]
    return cols


def _match(cols: AttributeColumns, filters: dict[str, object]) -> list[int]:
    return [int(i) for i in np.flatnonzero(cols.mask(filters, 4))]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "shoes"}, [0, 1, 3]),
        ({"category": "shoes", "in_stock": True}, [0]),
        ({"price": {"gte": 10, "lte": 100}}, [0]),
        ({"price": {"lt": 60}}, [0, 2]),
        ({"price": 9}, [2]),
        ({"tags": {"any": ["trail"]}}, [0, 2]),
        ({"category": {"in": ["socks", "hats"]}}, [2]),
        ({"price": {"in": [9, 50]}}, [0, 2]),
        ({"price": {"in": [120.5, "shoes"]}}, [1]),
        ({"price": {"in": [9.0]}}, [2]),
        ({"price": 50.0}, [0]),
        ({"category": {"in": ["socks", 9]}}, [2]),
        ({"in_stock": {"in": [True]}}, [0, 2]),
        ({"in_stock": {"in": [1]}}, []),  # a number is never a boolean
        ({"in_stock": {"in": [0]}}, []),
        ({"in_stock": 1}, []),
        ({"price": {"in": [True]}}, []),
        ({"brand": "Acme"}, [3]),
        ({"price": {"gt": 0}, "brand": "Acme"}, []),  # no price: never matches a range
        ({"color": "red"}, []),
        ({}, [0, 1, 2, 3]),
    ],
)
def test_conditions(
    columns: AttributeColumns, filters: dict[str, object], expected: list[int]
) -> None:
    assert _match(columns, filters) == expected


def test_replacing_and_clearing_attributes(columns: AttributeColumns) -> None:
    columns.set(0, {"category": "hats", "price": 500})
    assert _match(columns, {"category": "shoes"}) == [1, 3]
    assert _match(columns, {"price": {"gte": 400}}) == [0]
    assert _match(columns, {"tags": {"any": ["waterproof"]}}) == []
    columns.clear(2)
    assert _match(columns, {"category": "socks"}) == []
    columns.set(5000, {"category": "socks"})  # columns grow with the slots
    assert list(np.flatnonzero(columns.mask({"category": "socks"}, 5001))) == [5000]


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"price": {"gte": "cheap"}}, "filters.price.gte"),
        ({"price": {"between": [1, 2]}}, "filters.price"),
        ({"tags": {"any": []}}, "filters.tags"),
        ({"tags": {"any": [{"x": 1}]}}, "filters.tags"),
        ({"category": None}, "filters.category"),
        ({"price": 10**400}, "filters.price"),
        ({"price": {"lte": 2**64}}, "filters.price.lte"),
    ],
)
def test_bad_filters_name_the_field(
    columns: AttributeColumns, filters: dict[str, object], field: str
) -> None:
    with pytest.raises(FilterError, match=field.replace(".", r"\.")):
        columns.mask(filters, 4)


def test_a_long_attribute_name_is_cut_in_the_message(columns: AttributeColumns) -> None:
    with pytest.raises(FilterError) as refused:
        columns.mask({"k" * 100_000: None}, 4)
    assert str(refused.value).startswith("filters." + "k" * 64 + ":")
    assert len(str(refused.value)) < 200


def test_a_number_no_column_holds_changes_nothing(columns: AttributeColumns) -> None:
    with pytest.raises(OverflowError):
        columns.set(0, {"category": "hats", "price": 10**400})
    assert _match(columns, {"category": "shoes", "price": 50}) == [0]


def test_a_boolean_and_a_number_never_match_each_other() -> None:
    cols = AttributeColumns()
    cols.set(0, {"flag": 1, "level": True})
    cols.set(1, {"flag": True, "level": 1})
    assert list(np.flatnonzero(cols.mask({"flag": True}, 2))) == [1]
    assert list(np.flatnonzero(cols.mask({"flag": {"in": [1]}}, 2))) == [0]
    assert list(np.flatnonzero(cols.mask({"level": {"in": [True]}}, 2))) == [0]
    cols.clear(1)
    assert list(np.flatnonzero(cols.mask({"flag": {"in": [True, 1]}}, 2))) == [0]


def test_memory_follows_the_attributes_held_now() -> None:
    """New numeric names written to one item again and again: each had a column of the
    catalog's capacity for good (8 bytes a slot, on every replica). A name or value no
    slot holds is dropped; a number of few slots is kept slot by slot."""
    cols = AttributeColumns()
    for slot in range(5000):
        cols.set(slot, {"price": slot})
    for round_ in range(200):
        cols.set(7, {f"n{round_}_{i}": i for i in range(64)} | {"tag": [f"t{round_}"]})
    assert set(cols.numbers) == {"price"}  # held by 4,999 slots: a column
    assert set(cols.sparse) == {f"n199_{i}" for i in range(64)}
    assert cols.values == {"tag": {"t199": {7}}}
    assert list(np.flatnonzero(cols.mask({"n199_5": 5}, 5000))) == [7]
    assert list(np.flatnonzero(cols.mask({"n3_5": {"gte": 0}}, 5000))) == []
    cols.clear(7)
    assert cols.sparse == {}
    assert cols.values == {}


def test_a_number_moves_between_slot_by_slot_and_a_column_with_the_same_answers() -> None:
    """Random writes and clears against a plain evaluation of the same filters, across
    the share at which a name gets a column and back."""
    rng = np.random.default_rng(7)
    cols = AttributeColumns()
    held: dict[int, dict[str, object]] = {}
    size = 2048
    seen_dense = seen_sparse = False
    for step in range(3000):
        slot = int(rng.integers(0, size))
        # Phases: fill slots with `w` (it becomes a column), then clear most of them.
        if step < 1500 or rng.random() < 0.1:
            attrs: dict[str, object] = {"w": int(rng.integers(0, 50)), "c": f"v{slot % 5}"}
            cols.set(slot, attrs)  # type: ignore[arg-type]
            held[slot] = attrs
        elif held:  # clear one that holds attributes
            slot = sorted(held)[int(rng.integers(0, len(held)))]
            cols.clear(slot)
            del held[slot]
        seen_dense |= "w" in cols.numbers
        seen_sparse |= "w" in cols.sparse and seen_dense
        if step % 97 == 0:
            for filters in ({"w": {"gte": 10, "lt": 30}}, {"w": 7}, {"c": "v2", "w": {"lt": 25}}):
                expected = [
                    s
                    for s in range(size)
                    if s in held and _plain_match(held[s], filters)  # type: ignore[arg-type]
                ]
                assert [int(i) for i in np.flatnonzero(cols.mask(filters, size))] == expected
    assert seen_dense
    assert seen_sparse


def _plain_match(attrs: dict[str, object], filters: dict[str, object]) -> bool:
    for name, condition in filters.items():
        value = attrs.get(name)
        if isinstance(condition, dict):
            if not isinstance(value, int):
                return False
            if "gte" in condition and not value >= condition["gte"]:
                return False
            if "lt" in condition and not value < condition["lt"]:
                return False
        elif value != condition:
            return False
    return True
