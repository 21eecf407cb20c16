"""Events and online features from outside: a new user's events show in their features
within a second (affinities from the tenant's catalog attributes), bad events are named
and the rest kept, tenants never move each other's features, and the routes need their
scopes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import operator_headers
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration]

ITEMS = [
    {"id": "boot", "text": {"title": "Trail boot", "brand": "Acme"},
     "attributes": {"category": "shoes", "price": 120.0, "tags": ["trail"]}},
    {"id": "sock", "text": {"title": "Wool sock"},
     "attributes": {"category": "socks", "brand": "Globex", "price": 9.5}},
]  # fmt: skip


@pytest.fixture(scope="module")
def catalog(service: Service) -> str:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    with service.client() as client:
        r = client.put(f"/v1/catalogs/{name}/items", json={"items": ITEMS})
    assert r.status_code == 200, r.text
    return name


def _features(client: httpx.Client, user: str) -> dict[str, Any]:
    r = client.get(f"/v1/features/user/{user}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _tenant_key(service: Service, scopes: list[str]) -> dict[str, str]:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with service.client(headers=operator_headers()) as admin:
        made = admin.post("/admin/v1/tenants", json={"name": tenant, "id": tenant})
        assert made.status_code == 201, made.text
        key = admin.post(f"/admin/v1/tenants/{tenant}/keys", json={"scopes": scopes}).json()
    return {"Authorization": f"Bearer {key['key']}"}


def test_a_new_users_events_show_in_their_features_within_a_second(
    service: Service, catalog: str
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    with service.client() as client:
        before = _features(client, user)
        assert before["fresh"] == {"user_activity": False}
        assert before["views"]["user_activity"]["recent_items"] == []
        events = [
            {"user": user, "item": "sock", "type": "view"},
            {"user": user, "item": "boot", "type": "click"},
            {"user": user, "item": "boot", "type": "purchase"},
        ]
        sent = time.monotonic()
        r = client.post("/v1/events", json={"catalog": catalog, "events": events})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 3
        assert r.json()["features_updated"] is True
        while True:
            doc = _features(client, user)
            if doc["fresh"]["user_activity"] or time.monotonic() - sent > 1:
                break
            time.sleep(0.05)
        assert time.monotonic() - sent <= 1
        f = doc["views"]["user_activity"]
        assert f["recent_items"] == ["boot", "sock"]
        assert (f["views"], f["clicks"], f["purchases"], f["events"]) == (1, 1, 1, 3)
        assert list(f["category_affinity"]) == ["shoes", "socks"]  # 10 vs 1
        assert f["brand_affinity"] == {"Acme": pytest.approx(10 / 11, abs=1e-5),
                                       "Globex": pytest.approx(1 / 11, abs=1e-5)}  # fmt: skip
        assert f["spend"] == 120
        item = client.get("/v1/features/item/boot").json()
        assert item["views"]["item_popularity"]["events"] >= 2


def test_bad_events_are_named_and_the_rest_is_kept(service: Service, catalog: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    events = [
        {"user": user, "item": "sock", "type": "view"},
        {"user": user, "item": "sock", "type": "wishlist"},
        {"user": user, "item": "boot", "type": "click", "timestamp": "2026-11-30T10:00:00"},
        {"user": user, "item": "boot", "type": "add_to_cart", "timestamp": time.time() - 2},
    ]
    with service.client() as client:
        r = client.post("/v1/events", json={"catalog": catalog, "events": events})
        assert r.status_code == 400, r.text
        doc = r.json()
        assert doc["error"]["code"] == "invalid_events"
        assert doc["error"]["message"].startswith("events.1.type:")
        assert "2 of 4 accepted" in doc["error"]["message"]
        assert (doc["accepted"], doc["rejected"]) == (2, 2)
        assert [(e["index"], e["field"]) for e in doc["errors"]] == [
            (1, "events.1.type"),
            (2, "events.2.timestamp"),
        ]
        assert "wishlist" not in r.text
        f = _features(client, user)["views"]["user_activity"]
        assert f["recent_items"] == ["sock", "boot"]  # the cart 2 s before the view
        assert (f["views"], f["add_to_carts"], f["clicks"]) == (1, 1, 0)
        # A batch that is wrong as a whole keeps nothing.
        for body, field in (
            ({"events": []}, "events"),
            ({"events": [{"user": user, "item": "x", "type": "view"}], "extra": 1}, "extra"),
            ({"catalog": "bad name!", "events": [{}]}, "catalog"),
        ):
            r = client.post("/v1/events", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith(field), r.text
        # A catalog the tenant does not have (a typo) keeps nothing either.
        events = [{"user": user, "item": "boot", "type": "purchase"}]
        r = client.post("/v1/events", json={"catalog": "no-such-catalog", "events": events})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == "catalog: no such catalog"
        assert _features(client, user)["views"]["user_activity"]["purchases"] == 0


def test_a_user_id_with_a_slash_has_features_and_a_timestamp_past_utc_is_named(
    service: Service, catalog: str
) -> None:
    user = f"team/u-{uuid.uuid4().hex[:8]}"
    events = [
        {"user": user, "item": "boot", "type": "view"},
        {"user": user, "item": "sock", "type": "view", "timestamp": "0001-01-01T00:00:00+05:00"},
    ]
    with service.client() as client:
        r = client.post("/v1/events", json={"catalog": catalog, "events": events})
        assert r.status_code == 400, r.text
        assert [(e["field"], e["message"]) for e in r.json()["errors"]] == [
            ("events.1.timestamp", "out of range")
        ]
        sent = time.monotonic()
        while True:
            doc = _features(client, user.replace("/", "%2F"))
            if doc["fresh"]["user_activity"] or time.monotonic() - sent > 5:
                break
            time.sleep(0.05)
    assert doc["views"]["user_activity"]["recent_items"] == ["boot"]


def test_one_tenants_events_never_move_anothers_features(service: Service, catalog: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    other = _tenant_key(service, ["events", "recommend"])
    with service.client() as client:
        r = client.post(
            "/v1/events",
            json={"catalog": catalog, "events": [{"user": user, "item": "boot", "type": "view"}]},
        )
        assert r.status_code == 200, r.text
        mine = _features(client, user)
    with service.client(headers=other) as client:
        # The same user id is another tenant's user: nothing of ours shows.
        theirs = _features(client, user)
        assert theirs["fresh"] == {"user_activity": False}
        events = [{"user": user, "item": "boot", "type": "purchase"}] * 5
        assert client.post("/v1/events", json={"events": events}).status_code == 200
        assert _features(client, user)["views"]["user_activity"]["purchases"] == 5
    with service.client() as client:
        assert _features(client, user) == mine


def test_the_routes_need_their_scopes(service: Service) -> None:
    search_only = _tenant_key(service, ["search"])
    with service.client(headers=search_only) as client:
        body = {"events": [{"user": "u", "item": "i", "type": "view"}]}
        assert client.post("/v1/events", json=body).status_code == 403
        assert client.get("/v1/features/user/u").status_code == 403
    with service.client(headers={"Authorization": "Bearer nope"}) as client:
        assert client.get("/v1/features/user/u").status_code == 401
