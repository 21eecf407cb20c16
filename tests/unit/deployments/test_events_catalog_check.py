"""`POST /v1/events` names a catalog: known to the replica, to the store, or a 404; a
store that does not answer is a 503 that keeps nothing, as when the event log fails."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from deployments.errors import NotFound, Unavailable
from deployments.http.events_routes import _check_catalog


class _Store:
    def __init__(self, names: set[str], down: bool = False) -> None:
        self.names, self.down, self.asked = names, down, 0

    def has_catalog(self, tenant: str, catalog: str) -> bool:
        self.asked += 1
        if self.down:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return f"{tenant}/{catalog}" in self.names


def _host(store: _Store, held: set[tuple[str, str]]) -> SimpleNamespace:
    return SimpleNamespace(search=SimpleNamespace(catalogs=dict.fromkeys(held), store=store))


def test_a_catalog_is_checked_here_then_in_the_store() -> None:
    store = _Store({"acme/made-since"})
    host = _host(store, {("acme", "shop")})
    asyncio.run(_check_catalog(host, "acme", "shop"))  # held here: no store read
    assert store.asked == 0
    asyncio.run(_check_catalog(host, "acme", "made-since"))
    with pytest.raises(NotFound) as e:
        asyncio.run(_check_catalog(host, "acme", "shpo"))
    assert e.value.message == "catalog: no such catalog"
    with pytest.raises(NotFound):
        asyncio.run(_check_catalog(host, "globex", "shop"))  # another tenant's name
    asyncio.run(_check_catalog(SimpleNamespace(search=None), "acme", "any"))  # no search


def test_a_store_that_does_not_answer_is_a_503() -> None:
    host = _host(_Store(set(), down=True), set())
    with pytest.raises(Unavailable) as e:
        asyncio.run(_check_catalog(host, "acme", "shop"))
    assert e.value.status == 503
    assert "nothing was kept" in e.value.message
