"""The catalog routes over HTTP as a product backend calls them (FastAPI's test client,
the service's error handlers), on a real search service and catalog store (SQLite in
tmp_path, and the session's PostgreSQL server); the replica is a stand-in."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from configs.schema import SearchSettings
from deployments.dataplane import CallRecord
from deployments.http import hosted, search_routes
from deployments.http.envelope import Envelope
from deployments.pipelines.search import SearchService
from stores.catalog import NOT_UNICODE
from stores.catalog_sql import open_catalog_store
from tests.unit.deployments.fakes import RequestRecorder
from tests.unit.deployments.test_search_service import embed_items, fake_embed

LOG = logging.getLogger("test.catalog_routes")
JSON = {"content-type": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
def client(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The catalog and search routes of a replica whose one search version is m/v1."""
    from deployments.http.api import api

    store = open_catalog_store(url)
    service = SearchService(store, embed_items, 3600, LOG, backfill_delay_s=3600)

    async def admit(call: CallRecord, texts: int, field: str | None = None) -> None:
        return None

    async def embed_version(
        call: CallRecord, model: str, version: str, texts: list[str], field: str
    ) -> Any:
        return await fake_embed(f"{model}/{version}", texts)

    host = SimpleNamespace(
        envelope=Envelope(RequestRecorder(), LOG),
        plane=SimpleNamespace(admit=admit, authorize=lambda *_: None,
                              embed_version=embed_version),
        router=SimpleNamespace(choose=lambda *_: "v1", weights=lambda _: {"v1": 100}),
        args=SimpleNamespace(search=SearchSettings(), search_model=lambda: "m",
                             limits=SimpleNamespace(max_input_chars=10_000)),
        search=service,
    )  # fmt: skip
    monkeypatch.setattr(hosted, "replica_host", lambda: host)
    monkeypatch.setattr(search_routes, "replica_host", lambda: host)
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)
    app.include_router(search_routes.router)
    with TestClient(app) as test_client:
        test_client.portal.call(service.start, ["m/v1"])  # type: ignore[union-attr]
        yield test_client
        test_client.portal.call(service.close)  # type: ignore[union-attr]
    store.close()


def _put(client: TestClient, items: list[dict[str, Any]]) -> Any:
    return client.put("/v1/catalogs/shop/items", json={"items": items})


def _item_path(item_id: str) -> str:
    return f"/v1/catalogs/shop/items/{quote(item_id, safe='')}"  # as both SDKs send it


def _search_ids(client: TestClient) -> list[str]:
    got = client.post("/v1/search", json={"catalog": "shop", "query": "shoe", "k": 50})
    assert got.status_code == 200, got.text
    return sorted(hit["id"] for hit in got.json()["data"])


LINE_BREAKS = ["abc\n", "a\nb", "\n", "a\r\nb", "x\n\n"]


def test_an_item_id_with_a_line_break_is_read_and_deleted_as_itself(client: TestClient) -> None:
    """An id may hold any character but NUL: one ending in a line break had been read
    (and deleted!) as the id without it, and one holding a line break found no route."""
    ids = ["abc", *LINE_BREAKS]
    sent = [{"id": i, "text": {"title": f"shoe {n}"}} for n, i in enumerate(ids)]
    assert _put(client, sent).status_code == 200
    for n, item_id in enumerate(ids):
        got = client.get(_item_path(item_id))
        assert got.status_code == 200, (item_id, got.text)
        assert (got.json()["id"], got.json()["text"]) == (item_id, {"title": f"shoe {n}"})
    for item_id in LINE_BREAKS:
        gone = client.delete(_item_path(item_id))
        assert gone.status_code == 200, (item_id, gone.text)
        assert gone.json() == {"id": item_id, "deleted": True}
        assert client.get(_item_path(item_id)).status_code == 404
    assert client.get(_item_path("abc")).json()["text"] == {"title": "shoe 0"}
    assert _search_ids(client) == ["abc"]
    assert client.delete(_item_path("abc\n")).status_code == 404  # not "abc"
    assert client.get(_item_path("abc")).status_code == 200


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (rb'{"id": "x", "text": {"title": "shoe \ud800"}}', "items.1.text.title"),
        (rb'{"id": "x", "text": {"title\udc00": "shoe"}}', "items.1.text"),
        (rb'{"id": "x", "text": {"t": "shoe"}, "attributes": {"size\ud800": 42}}',
         "items.1.attributes"),
    ],
)  # fmt: skip
def test_a_text_or_name_no_utf8_writer_writes_is_refused_by_field(
    client: TestClient, item: bytes, field: str
) -> None:
    """JSON's `\\ud800` escape carries a lone surrogate into a Python string. In a text
    field's value it had made the upsert a 500 (the tokenizer cannot take it); in a text
    field's or an attribute's name it was stored, and from then on every read of the
    item, and every search that found it, was a 500 (no UTF-8 writer writes it)."""
    body = b'{"items": [{"id": "ok", "text": {"title": "shoe"}}, ' + item + b"]}"
    got = client.put("/v1/catalogs/shop/items", content=body, headers=JSON)
    assert got.status_code == 400, got.text
    message = got.json()["error"]["message"]
    assert message.startswith(f"{field}: ")
    assert NOT_UNICODE in message
    assert client.get(_item_path("ok")).status_code == 404  # nothing of the request written
    assert client.get("/v1/catalogs").json()["data"] == []
