"""Tenant catalogs: items, their embeddings per model version, and the change log
replicas follow. The store is the source of truth; a replica's search index is a cache
of it. Backend: `stores/catalog_sql.py` (SQLite embedded, PostgreSQL in production, in
the registry's database).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# An attribute value: equality on strings, numbers and booleans; ranges on numbers;
# membership on lists of strings (tags).
AttrValue = str | int | float | bool | list[str]
# The largest integer an attribute may hold: every JSON reader (a JavaScript number, a
# float64 filter column, orjson's 64 bits) holds the integers up to here exactly.
MAX_SAFE_INTEGER = 2**53 - 1
ATTRIBUTE_KINDS = "a string, a finite number, true or false, or a list of strings"
# JSON's `\ud800` escape carries a lone surrogate into a Python string, which no UTF-8
# writer (orjson answering a search, a database) can write.
NOT_UNICODE = "valid Unicode text (no unpaired surrogate, \\ud800-\\udfff)"


def is_unicode(text: str) -> bool:
    """Whether `text` can be written as UTF-8 (holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def attribute_problem(value: object) -> str | None:
    """Why `value` cannot be an attribute value, or None when it can: a string, a
    boolean, an integer within +-`MAX_SAFE_INTEGER`, a finite float or a list of
    strings; every string valid Unicode."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if is_unicode(value) else NOT_UNICODE
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return None
        return f"an integer from -{MAX_SAFE_INTEGER} to {MAX_SAFE_INTEGER}"
    if isinstance(value, float) and math.isfinite(value):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None if all(is_unicode(v) for v in value) else NOT_UNICODE
    return ATTRIBUTE_KINDS


@dataclass(frozen=True)
class Item:
    """One catalog item as the tenant sent it."""

    id: str
    text: dict[str, str]  # text fields (title, description, brand, ...): embedded, BM25
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    updated_at: datetime | None = None  # set by the store


MAX_ITEM_ID = 256
MAX_TEXT_FIELDS = 16
MAX_ATTRIBUTES = 64
# The most of a field name (the caller's) a problem repeats.
MAX_NAME_CHARS = 64


def item_problem(item: Item) -> str | None:
    """What makes `item` one the items route would refuse, naming the field (`id`,
    `text.title`, `attributes.price`), or None: for items that come another way (a
    snapshot, a JSON-lines file), so that they meet the same rules."""
    item_id: object = item.id
    if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ITEM_ID:
        return f"id: a string of 1 to {MAX_ITEM_ID} characters"
    if "\x00" in item_id or item_id in (".", ".."):
        return "id: no NUL character, and not . or .."
    if not is_unicode(item_id):
        return f"id: {NOT_UNICODE}"
    text: object = item.text
    if not isinstance(text, dict) or not 0 < len(text) <= MAX_TEXT_FIELDS:
        return f"text: an object of 1 to {MAX_TEXT_FIELDS} text fields"
    for name, value in text.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return f"text.{str(name)[:MAX_NAME_CHARS]}: a string"
        if not is_unicode(name):  # named, the problem could not be written either
            return f"text: names are {NOT_UNICODE}"
        if not is_unicode(value):
            return f"text.{name[:MAX_NAME_CHARS]}: {NOT_UNICODE}"
    attributes: object = item.attributes
    if not isinstance(attributes, dict) or len(attributes) > MAX_ATTRIBUTES:
        return f"attributes: an object of at most {MAX_ATTRIBUTES} attributes"
    for name, value in attributes.items():
        if not isinstance(name, str):
            return "attributes: names are strings"
        if not is_unicode(name):
            return f"attributes: names are {NOT_UNICODE}"
        if (problem := attribute_problem(value)) is not None:
            return f"attributes.{name[:MAX_NAME_CHARS]}: {problem}"
    return None


def same_body(a: Item, b: Item) -> bool:
    """Whether two items have the same text and attributes, as JSON says them: `1`
    and `true`, or `1` and `1.0`, differ (Python's `==` equates them); so do text
    fields in another order, which embed as another text (`item_text`)."""
    return _canonical(a) == _canonical(b)


def _canonical(item: Item) -> str:
    return json.dumps([list(item.text.items()), item.attributes], sort_keys=True)


def item_text(item: Item) -> str:
    """The text embedded and indexed for an item: its text fields in order."""
    return ". ".join(v for v in item.text.values() if v)


# The change log's item id for a change of the catalog itself (its settings); no item
# may have it (an item id is never empty).
CATALOG_CHANGE = ""


@dataclass(frozen=True)
class Change:
    """One entry of the change log: an upsert (`item` set), a delete (`item` None), or
    (`item_id` == CATALOG_CHANGE) new catalog settings, in `settings`."""

    seq: int
    tenant_id: str
    catalog: str
    item_id: str
    item: Item | None
    settings: dict[str, Any] | None = None


@dataclass(frozen=True)
class CatalogInfo:
    """A catalog of a tenant."""

    tenant_id: str
    name: str
    items: int
    created_at: datetime
    settings: dict[str, Any] = field(default_factory=dict)


class CatalogStore(Protocol):
    """Items, vectors and the change log. Blocking calls (replicas use threads)."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""

    def upsert(
        self,
        tenant_id: str,
        catalog: str,
        items: list[Item],
        vectors: dict[str, dict[str, bytes]] | None = None,
    ) -> int:
        """Insert or replace items with their new vectors by space (float32 bytes by
        item id), in one transaction, durable when it returns; the items' other vectors
        are deleted. The sequence number of the last change written."""

    def delete(self, tenant_id: str, catalog: str, item_id: str) -> int | None:
        """Delete one item; the change's sequence number, None when there was none."""

    def get(self, tenant_id: str, catalog: str, item_id: str) -> Item | None:
        """One item of the tenant's catalog, or None (also for another tenant's)."""

    def get_many(self, tenant_id: str, catalog: str, item_ids: list[str]) -> dict[str, Item]:
        """The items of these ids in the tenant's catalog (missing ones left out)."""

    def has_catalog(self, tenant_id: str, catalog: str) -> bool:
        """Whether the tenant has a catalog of that name."""

    def configure(self, tenant_id: str, catalog: str, settings: dict[str, Any]) -> int:
        """Replace a catalog's settings (creating the catalog); the change's seq."""

    def catalogs(self, tenant_id: str, name: str | None = None) -> list[CatalogInfo]:
        """The tenant's catalogs (only the one called `name`, when given)."""

    def scan(self, tenant_id: str, catalog: str, after_id: str | None, limit: int) -> list[Item]:
        """Items by id, after `after_id`, at most `limit`: a consistent read of the
        catalog page by page."""

    def head(self) -> int:
        """The newest sequence number (0 when the log is empty)."""

    def changes(self, after_seq: int, limit: int) -> list[Change]:
        """Changes with seq > `after_seq`, oldest first, at most `limit`: every tenant."""

    def seed(
        self, tenant_id: str, catalog: str, items: list[Item], vectors: dict[str, dict[str, bytes]]
    ) -> int | None:
        """Create a catalog from a snapshot, items (one change each) and their vectors by
        space in one transaction, only if the catalog does not exist yet: the seq of its
        last change, or None when it existed (nothing is written)."""

    def put_vectors(
        self,
        tenant_id: str,
        catalog: str,
        space: str,
        vectors: dict[str, bytes],
        made_from: dict[str, Item] | None = None,
    ) -> list[str]:
        """Store item embeddings of one embedding space (`model/version`), float32 bytes
        by item id; items that do not exist (any more) are skipped, and with `made_from`
        (the items as they were embedded, by id) so are items whose text or attributes
        changed since. The ids written."""

    def get_vectors(
        self, tenant_id: str, catalog: str, space: str, item_ids: list[str]
    ) -> dict[str, bytes]:
        """Stored embeddings of these items in one space (missing ones left out)."""

    def count_vectors(self, space: str, tenant_id: str | None = None) -> dict[tuple[str, str], int]:
        """How many embeddings of `space` are stored, per (tenant, catalog) that has any
        (of every tenant, or of `tenant_id`'s catalogs only)."""

    def drop_space(self, space: str) -> int:
        """Delete every stored embedding of a retired version; how many."""

    def close(self) -> None:
        """Release connections."""
