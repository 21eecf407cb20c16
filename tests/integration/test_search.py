"""Catalogs and search from outside: upsert, read, search (vector, hybrid, filtered),
delete, tenant isolation, the version's own index every time under a split, bad
requests, and items that survive a restart of every Ingress replica."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import TEST_TENANT, operator_headers
from tests.integration.conftest import Service, wait_ready

pytestmark = [pytest.mark.integration]

BRANDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
COLORS = ["red", "blue", "black", "white", "green", "grey"]
KINDS = [
    ("trail running shoes", "shoes"),
    ("road running shoes", "shoes"),
    ("hiking boots", "shoes"),
    ("wool socks", "socks"),
    ("rain jacket", "jackets"),
    ("down jacket", "jackets"),
]


def _items(n: int = 60) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        brand, color = BRANDS[i % len(BRANDS)], COLORS[(i // 2) % len(COLORS)]
        kind, category = KINDS[(i // 3) % len(KINDS)]
        items.append(
            {
                "id": f"item-{i}",
                "text": {
                    "title": f"{brand} {color} {kind}",
                    "description": f"{color.capitalize()} {kind} by {brand}, model {i}.",
                    "sku": f"SKU-{i:05d}",
                },
                "attributes": {
                    "category": category,
                    "brand": brand,
                    "price": 20 + (i * 7) % 180,
                    "in_stock": i % 4 != 0,
                    "tags": [color, category],
                },
            }
        )
    return items


def _text(item: dict[str, Any]) -> str:
    return ". ".join(item["text"].values())


@pytest.fixture(scope="module")
def catalog(service: Service) -> tuple[str, list[dict[str, Any]]]:
    name = f"shop-{uuid.uuid4().hex[:8]}"
    items = _items()
    with service.client() as client:
        r = client.put(f"/v1/catalogs/{name}/items", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["upserted"] == len(items)
    return name, items


def _search(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = client.post("/v1/search", json=body, headers=headers)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _vectors(client: httpx.Client, version: str, texts: list[str]) -> np.ndarray:
    r = client.post(
        "/v1/embeddings",
        json={"model": "minilm", "input": texts},
        headers={"X-Model-Version": version},
    )
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def test_items_read_back(service: Service, catalog: tuple[str, list[dict[str, Any]]]) -> None:
    name, items = catalog
    with service.client() as client:
        got = client.get(f"/v1/catalogs/{name}/items/item-7").json()
        listed = client.get("/v1/catalogs").json()["data"]
    assert got["text"] == items[7]["text"]
    assert got["attributes"] == items[7]["attributes"]
    assert {"name": name, "items": len(items)}.items() <= next(
        c for c in listed if c["name"] == name
    ).items()


def test_each_version_searches_its_own_index(
    service: Service, catalog: tuple[str, list[dict[str, Any]]], report: list[str]
) -> None:
    """Under the split, every answer comes from the index of the version that embedded
    the query, and matches exact search with that version's vectors."""
    name, items = catalog
    query = "red trail running shoes"
    seen: set[str] = set()
    with service.client() as client:
        exact = {}
        for version in ("v1", "v2"):
            matrix = _vectors(client, version, [_text(i) for i in items])
            q = _vectors(client, version, [query])[0]
            order = np.argsort(-(matrix @ q))[:5]
            exact[version] = [items[int(j)]["id"] for j in order]
        for n in range(40):
            doc = _search(
                client,
                {"catalog": name, "query": query, "k": 5, "hybrid": False},
                **{"X-Routing-Key": f"user-{n}"},
            )
            version = doc["version"]
            seen.add(version)
            assert doc["index"]["space"] == f"minilm/{version}"
            assert [d["id"] for d in doc["data"]] == exact[version]
    report.append(f"search under the split: versions seen {sorted(seen)}, each matched exact")
    assert seen == {"v1", "v2"}  # 90/10 over 40 sticky keys: both answer


def test_filters_still_return_k(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    name, items = catalog
    socks = [i["id"] for i in items if i["attributes"]["category"] == "socks"]
    with service.client() as client:
        doc = _search(client, {"catalog": name, "query": "running shoes", "k": 5,
                               "filters": {"category": "socks"}})  # fmt: skip
        assert len(doc["data"]) == min(5, len(socks))
        assert all(d["attributes"]["category"] == "socks" for d in doc["data"])
        cheap = _search(client, {"catalog": name, "query": "jacket", "k": 50,
                                 "filters": {"price": {"lte": 60}, "in_stock": True}})  # fmt: skip
        expected = {i["id"] for i in items
                    if i["attributes"]["price"] <= 60 and i["attributes"]["in_stock"]}  # fmt: skip
        assert {d["id"] for d in cheap["data"]} == expected
        tagged = _search(client, {"catalog": name, "query": "x", "k": 3,
                                  "filters": {"tags": {"any": ["green"]}}})  # fmt: skip
        assert all("green" in d["attributes"]["tags"] for d in tagged["data"])


def test_hybrid_finds_the_exact_sku(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    name, _ = catalog
    with service.client() as client:
        hybrid = _search(client, {"catalog": name, "query": "SKU-00017", "k": 3, "hybrid": True})
    assert hybrid["data"][0]["id"] == "item-17"
    assert hybrid["index"]["hybrid"] is True


def test_a_catalog_default_decides_hybrid_unless_the_request_does(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    name, _ = catalog
    body = {"catalog": name, "query": "SKU-00017", "k": 3}
    with service.client() as client:
        assert _search(client, body)["index"]["hybrid"] is True  # search.hybrid_default
        r = client.put(f"/v1/catalogs/{name}", json={"hybrid": False})
        assert r.status_code == 200, r.text
        assert r.json()["settings"] == {"hybrid": False}
        assert r.json()["items"] == 60
        assert _search(client, body)["index"]["hybrid"] is False
        assert _search(client, {**body, "hybrid": True})["index"]["hybrid"] is True
        listed = {c["name"]: c for c in client.get("/v1/catalogs").json()["data"]}
        assert listed[name]["settings"] == {"hybrid": False}
        bad = client.put(f"/v1/catalogs/{name}", json={"hybrid": "often"})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("hybrid")
        assert client.put(f"/v1/catalogs/{name}", json={}).json()["settings"] == {}
        assert _search(client, body)["index"]["hybrid"] is True
        # A new, empty catalog can be created with its settings before any item.
        fresh = f"new-{uuid.uuid4().hex[:8]}"
        made = client.put(f"/v1/catalogs/{fresh}", json={"hybrid": False}).json()
        assert (made["name"], made["items"], made["settings"]) == (fresh, 0, {"hybrid": False})


def test_delete_vanishes_and_upsert_replaces(service: Service) -> None:
    name = f"tmp-{uuid.uuid4().hex[:8]}"
    items = _items(12)
    with service.client() as client:
        assert client.put(f"/v1/catalogs/{name}/items", json={"items": items}).status_code == 200
        body = {"catalog": name, "query": "SKU-00004", "k": 12}
        assert "item-4" in [d["id"] for d in _search(client, body)["data"]]
        assert client.delete(f"/v1/catalogs/{name}/items/item-4").status_code == 200
        assert client.get(f"/v1/catalogs/{name}/items/item-4").status_code == 404
        assert client.delete(f"/v1/catalogs/{name}/items/item-4").status_code == 404
        assert "item-4" not in [d["id"] for d in _search(client, body)["data"]]
        changed = {**items[5], "text": {"title": "Zanzibar velvet slippers"}}
        assert (
            client.put(f"/v1/catalogs/{name}/items", json={"items": [changed]}).status_code == 200
        )
        top = _search(client, {"catalog": name, "query": "Zanzibar velvet slippers", "k": 1})
        assert top["data"][0]["id"] == "item-5"
        assert top["data"][0]["text"] == {"title": "Zanzibar velvet slippers"}


def test_an_item_id_with_a_slash_is_read_and_deleted_like_any(service: Service) -> None:
    """The SDKs send `a/b` as `a%2Fb`; the server reads it back as one id."""
    name = f"tmp-{uuid.uuid4().hex[:8]}"
    items = [{"id": "shoes/trail-7", "text": {"title": "Trail shoe"}}]
    with service.client() as client:
        assert client.put(f"/v1/catalogs/{name}/items", json={"items": items}).status_code == 200
        got = client.get(f"/v1/catalogs/{name}/items/shoes%2Ftrail-7")
        assert got.status_code == 200, got.text
        assert got.json()["id"] == "shoes/trail-7"
        assert client.delete(f"/v1/catalogs/{name}/items/shoes%2Ftrail-7").status_code == 200
        assert client.get(f"/v1/catalogs/{name}/items/shoes%2Ftrail-7").status_code == 404


ATTRIBUTE_KINDS = "a string, a finite number, true or false, or a list of strings"


def test_items_no_store_can_hold_are_refused_by_field(service: Service) -> None:
    name = f"tmp-{uuid.uuid4().hex[:8]}"
    bodies = [
        ('{"items": [{"id": "a", "text": {"t": "x"}}, '
         '{"id": "b", "text": {"t": "y"}, "attributes": {"price": NaN}}]}',
         "items.1.attributes.price: " + ATTRIBUTE_KINDS),
        ('{"items": [', "body: not valid JSON"),
    ]  # fmt: skip
    with service.client() as client:
        for raw, message in bodies:
            r = client.put(
                f"/v1/catalogs/{name}/items",
                content=raw,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == message
        assert client.get(f"/v1/catalogs/{name}/items/a").status_code == 404
        nul = client.get(f"/v1/catalogs/{name}/items/a%00b")
        assert nul.status_code == 400, nul.text
        assert nul.json()["error"]["message"] == "item_id: must not contain NUL characters"


def test_another_tenant_sees_nothing(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    name, _ = catalog
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with service.client(headers=operator_headers()) as admin:
        assert (
            admin.post("/admin/v1/tenants", json={"name": tenant, "id": tenant}).status_code == 201
        )
        body = {"scopes": ["search", "catalog"]}
        key = admin.post(f"/admin/v1/tenants/{tenant}/keys", json=body).json()
        reader = admin.post(f"/admin/v1/tenants/{tenant}/keys", json={"scopes": ["search"]})
    other = {"Authorization": f"Bearer {key['key']}"}
    with service.client(headers={"Authorization": f"Bearer {reader.json()['key']}"}) as client:
        # A search key (one a browser may hold) reads and searches, never writes.
        put = client.put(f"/v1/catalogs/{name}/items", json={"items": []})
        assert put.status_code == 403
        assert "'catalog' scope" in put.json()["error"]["message"]
        assert client.delete(f"/v1/catalogs/{name}/items/item-1").status_code == 403
        assert client.get(f"/v1/catalogs/{name}/items/item-1").status_code == 404
    with service.client(headers=other) as client:
        assert client.get(f"/v1/catalogs/{name}/items/item-1").status_code == 404
        assert client.delete(f"/v1/catalogs/{name}/items/item-1").status_code == 404
        doc = _search(client, {"catalog": name, "query": "shoes", "k": 5})
        assert doc["data"] == []
        assert client.get("/v1/catalogs").json()["data"] == []
        # Its own catalog of the same name is another catalog.
        mine = {"items": [{"id": "item-1", "text": {"title": "only mine"}}]}
        assert client.put(f"/v1/catalogs/{name}/items", json=mine).status_code == 200
        assert (
            client.get(f"/v1/catalogs/{name}/items/item-1").json()["text"]
            == mine["items"][0]["text"]
        )
    with service.client() as client:
        assert (
            client.get(f"/v1/catalogs/{name}/items/item-1").json()["text"]["title"] != "only mine"
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"catalog": "c", "query": "x", "k": 0}, "k"),
        ({"catalog": "c", "query": "x", "k": 5000}, "k"),
        ({"catalog": "c", "query": ""}, "query"),
        ({"catalog": "bad name!", "query": "x"}, "catalog"),
        ({"catalog": "c", "query": "x", "filters": {"price": {"gte": "a"}}}, "filters.price.gte"),
        ({"catalog": "c", "query": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_searches_name_the_field(service: Service, body: dict[str, Any], field: str) -> None:
    with service.client() as client:
        r = client.post("/v1/search", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


def test_the_json_routes_refuse_what_they_cannot_read(service: Service) -> None:
    """Search and recommendations are served straight from ASGI: a body that is not JSON
    or not an object, a missing body and another method get the same clear answers as
    every route."""
    with service.client() as client:
        for route in ("/v1/search", "/v1/recommendations"):
            r = client.post(route, content=b'{"catalog": ')
            assert (r.status_code, r.json()["error"]["message"]) == (400, "body: not valid JSON")
            r = client.post(route, json=["catalog"])
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith("body: "), r.text
            r = client.post(route)
            assert (r.status_code, r.json()["error"]["message"]) == (400, "body: Field required")
            r = client.get(route)
            assert r.status_code == 405, r.text
            assert r.headers["allow"] == "POST"
            assert r.json()["error"]["code"] == "method_not_allowed"
            assert r.headers["x-request-id"]


def test_bad_upserts_name_the_field(service: Service) -> None:
    with service.client() as client:
        cases = [
            ({"items": []}, "items"),
            ({"items": [{"id": "", "text": {"t": "x"}}]}, "items.0.id"),
            ({"items": [{"id": "a", "text": {}}]}, "items.0.text"),
            ({"items": [{"id": "a", "text": {"t": "x" * 5000}}]}, "items.0.text.t"),
            ({"items": [{"id": "a", "text": {"t": "x"}, "attributes": {"p": {"a": 1}}}]},
             "items.0.attributes.p"),
        ]  # fmt: skip
        for body, field in cases:
            r = client.put("/v1/catalogs/c/items", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["message"].startswith(field), r.text


def test_items_survive_a_restart_of_every_replica(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    name, _ = catalog
    original = copy.deepcopy(service.config)
    config = copy.deepcopy(service.config)
    # An args change: Serve restarts every Ingress replica.
    config["applications"][0]["args"]["search"] = {"follow_s": 0.25}
    service.redeploy(config)
    try:
        wait_ready(service)
        deadline = time.monotonic() + 60
        doc: dict[str, Any] = {}
        with service.client() as client:
            while time.monotonic() < deadline:
                r = client.post("/v1/search", json={"catalog": name, "query": "SKU-00017", "k": 1})
                if r.status_code == 200 and r.json()["data"]:
                    doc = r.json()
                    break
                time.sleep(0.5)
        assert doc["data"][0]["id"] == "item-17"
    finally:
        service.redeploy(original)
        wait_ready(service)


def test_index_completeness_is_shown_and_guards_promote(
    service: Service, catalog: tuple[str, list[dict[str, Any]]]
) -> None:
    from servekit.rollout_cli import search_index_blocker

    name, items = catalog
    with service.client(headers=operator_headers()) as admin:
        doc = admin.get("/admin/v1/search/indexes").json()
    # The recommender's item vectors are kept beside the search model's.
    assert doc["spaces"] == ["minilm/v1", "minilm/v2", "recommender/v1"]
    assert doc["pending"] == {"minilm/v1": 0, "minilm/v2": 0, "recommender/v1": 0}
    mine = next(
        c for c in doc["catalogs"] if c["catalog"] == name and c["tenant_id"] == TEST_TENANT
    )
    assert mine["items"] == len(items)
    assert mine["indexes"]["minilm/v2"] == {"vectors": len(items), "complete": True}
    with service.client(headers=operator_headers()) as admin:
        counted = admin.get("/admin/v1/search/indexes", params={"stored": "minilm/v2"})
        unknown = admin.get("/admin/v1/search/indexes", params={"stored": "minilm/v9"})
    assert counted.status_code == 200, counted.text
    stored = next(
        c for c in counted.json()["catalogs"]
        if c["catalog"] == name and c["tenant_id"] == TEST_TENANT
    )  # fmt: skip
    assert stored["stored"] == len(items)  # what an index of v2 would reload at once
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"].startswith("stored: 'minilm/v9' is not a declared")
    assert search_index_blocker(service.base_url, "minilm", "v2") is None
    blocked = search_index_blocker(service.base_url, "minilm", "v2-slow")
    assert blocked is not None
    assert "minilm/v2-slow has no complete search index" in blocked
    assert "shadow or a canary" in blocked
