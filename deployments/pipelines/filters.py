"""Attribute filters of a search request, evaluated over a catalog's attribute columns.

A filter is a mapping of attribute -> condition:
- a value (string, number, boolean): equality;
- `{"gte": x, "lte": y, "gt": x, "lt": y}` on numbers: a range (any subset);
- `{"in": [v, ...]}`: equal to one of the values (strings, numbers, booleans, mixed);
  `{"any": [tag, ...]}`: a list attribute holding at least one of the tags.
A boolean is never equal to a number: `1` does not match `true`, nor `true` match `1`;
`42` and `42.0` are the same number.
The result is a boolean mask over the catalog's slots; items without the attribute never
match a condition on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from deployments.errors import MAX_NAME_CHARS
from stores.catalog import MAX_SAFE_INTEGER, AttrValue

Mask = npt.NDArray[np.bool_]
RANGE_OPS = ("gte", "gt", "lte", "lt")
MAX_IN_VALUES = 256
# A number held by at least one slot in this many gets a column of its own (see
# `AttributeColumns`).
DENSE_SHARE = 16


class FilterError(ValueError):
    """A filter that cannot be evaluated; the message names the field."""


class AttributeColumns:
    """Attributes by slot: numbers in float64 columns (NaN: missing), other values in
    inverted lists value -> slots, so equality and membership are set lookups.

    Memory follows the attributes the items hold now, not every name ever written: a
    number held by few slots is kept as slot -> value (a column of the catalog's
    capacity for it would cost 8 bytes a slot, so a caller writing new names to one
    item again and again grew every replica by a column each), becomes a column once
    one slot in `DENSE_SHARE` holds it and goes back below a quarter of that, and a
    name or a value no slot holds any more is dropped."""

    def __init__(self) -> None:
        self.capacity = 0
        self.numbers: dict[str, npt.NDArray[np.float64]] = {}  # dense columns
        self.sparse: dict[str, dict[int, float]] = {}
        self.values: dict[str, dict[Any, set[int]]] = {}
        self._counts: dict[str, int] = {}  # slots holding a number of each name
        self._held: dict[int, dict[str, AttrValue]] = {}

    def set(self, slot: int, attributes: dict[str, AttrValue]) -> None:
        """Replace the attributes of `slot`; a number no float64 holds raises
        `OverflowError` before anything is written."""
        numbers = {
            name: float(value)
            for name, value in attributes.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self.clear(slot)
        self._grow(slot + 1)
        for name, value in attributes.items():
            if isinstance(value, bool | str):
                self.values.setdefault(name, {}).setdefault(_key(value), set()).add(slot)
            elif name in numbers:
                self._put_number(name, slot, numbers[name])
            elif isinstance(value, list):
                for tag in value:
                    self.values.setdefault(name, {}).setdefault(tag, set()).add(slot)
        self._held[slot] = attributes

    def clear(self, slot: int) -> None:
        """Forget the attributes of `slot`."""
        old = self._held.pop(slot, None)
        if not old:
            return
        for name, value in old.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._drop_number(name, slot)
                continue
            index = self.values.get(name)
            if index is None:
                continue
            for v in value if isinstance(value, list) else [value]:
                slots = index.get(_key(v))
                if slots is not None:
                    slots.discard(slot)
                    if not slots:
                        del index[_key(v)]
            if not index:
                del self.values[name]

    def _put_number(self, name: str, slot: int, value: float) -> None:
        count = self._counts[name] = self._counts.get(name, 0) + 1
        column = self.numbers.get(name)
        if column is not None:
            column[slot] = value
            return
        held = self.sparse.setdefault(name, {})
        held[slot] = value
        if count * DENSE_SHARE >= self.capacity:
            column = self.numbers[name] = np.full(self.capacity, np.nan)
            column[list(held)] = list(held.values())
            del self.sparse[name]

    def _drop_number(self, name: str, slot: int) -> None:
        count = self._counts[name] = self._counts[name] - 1
        column = self.numbers.get(name)
        if column is None:
            held = self.sparse[name]
            del held[slot]
        else:
            column[slot] = np.nan
            if count * DENSE_SHARE * 4 < self.capacity:
                kept = np.flatnonzero(~np.isnan(column))
                held = self.sparse[name] = dict(
                    zip(kept.tolist(), column[kept].tolist(), strict=True)
                )
                del self.numbers[name]
        if count == 0:
            del self._counts[name]
            self.sparse.pop(name, None)

    def _grow(self, size: int) -> None:
        if size <= self.capacity:
            return
        new = max(size, self.capacity * 2, 1024)
        for name, column in self.numbers.items():
            grown = np.full(new, np.nan)
            grown[: self.capacity] = column
            self.numbers[name] = grown
        self.capacity = new

    def _column(self, name: str, size: int) -> npt.NDArray[np.float64] | None:
        """The numbers of `name` over the first `size` slots (NaN: missing); None when
        no slot holds one."""
        column = self.numbers.get(name)
        if column is not None:
            return _fit(column, size)
        held = self.sparse.get(name)
        if not held:
            return None
        slots = np.fromiter(held.keys(), dtype=np.int64, count=len(held))
        values = np.fromiter(held.values(), dtype=np.float64, count=len(held))
        inside = slots < size
        out = np.full(size, np.nan)
        out[slots[inside]] = values[inside]
        return out

    def mask(self, filters: dict[str, Any], size: int) -> Mask:
        """Slots (of `size`) whose attributes satisfy every condition."""
        out = np.ones(size, dtype=np.bool_)
        for name, condition in filters.items():
            out &= self._condition(name, condition, size)
        return out

    def _condition(self, name: str, condition: Any, size: int) -> Mask:
        where = f"filters.{name[:MAX_NAME_CHARS]}"
        if isinstance(condition, dict):
            ops = set(condition)
            if ops and ops <= set(RANGE_OPS):
                return self._range(name, condition, size, where)
            if ops == {"in"}:
                return self._slots(name, _values(condition["in"], where), size)
            if ops == {"any"}:
                return self._slots(name, _values(condition["any"], where), size)
            raise FilterError(f"{where}: use a value, gte/gt/lte/lt, in or any")
        if isinstance(condition, bool | str | int | float):
            return self._slots(name, _values([condition], where), size)
        raise FilterError(f"{where}: a string, number, boolean or an object")

    def _range(self, name: str, condition: dict[str, Any], size: int, where: str) -> Mask:
        column = self._column(name, size)
        values = column if column is not None else np.full(size, np.nan)
        out = ~np.isnan(values)
        for op, raw in condition.items():
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise FilterError(f"{where}.{op}: a number")
            bound = _number(raw, f"{where}.{op}")
            with np.errstate(invalid="ignore"):
                if op == "gte":
                    out &= values >= bound
                elif op == "gt":
                    out &= values > bound
                elif op == "lte":
                    out &= values <= bound
                else:
                    out &= values < bound
        return out

    def _slots(self, name: str, wanted: Iterable[Any], size: int) -> Mask:
        """Slots equal to one of `wanted`: numbers in the number column, strings and
        booleans (and tags) in the inverted lists."""
        out = np.zeros(size, dtype=np.bool_)
        index = self.values.get(name, {})
        numbers = [float(v) for v in wanted if _is_number(v)]
        column = self._column(name, size) if numbers else None
        if column is not None:
            out |= np.isin(column, numbers)
        for value in wanted:
            if _is_number(value):
                continue
            slots = index.get(_key(value))
            if slots:
                picked = np.fromiter((s for s in slots if s < size), dtype=np.int64)
                out[picked] = True
        return out


def _fit(column: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    if len(column) >= size:
        return column[:size]
    return np.concatenate([column, np.full(size - len(column), np.nan)])


def _number(value: int | float, where: str) -> float:
    """A number of a filter as its column compares it; an integer past what an
    attribute may hold (2^53) names the field."""
    if isinstance(value, int) and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise FilterError(f"{where}: an integer from -{MAX_SAFE_INTEGER} to {MAX_SAFE_INTEGER}")
    return float(value)


def _values(values: Any, where: str) -> list[Any]:
    """The values of an `in` or `any` (or one value), numbers checked."""
    if not isinstance(values, list) or not values or len(values) > MAX_IN_VALUES:
        raise FilterError(f"{where}: a list of 1 to {MAX_IN_VALUES} values")
    if not all(isinstance(v, str | bool | int | float) for v in values):
        raise FilterError(f"{where}: values must be strings, numbers or booleans")
    for value in values:
        if _is_number(value):
            _number(value, where)
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key(value: Any) -> Any:
    """A value's key in the inverted lists: a boolean's apart from every number's, as
    Python's `1 == True` (same hash) would otherwise let `1` find `true`."""
    return (bool, value) if isinstance(value, bool) else value
