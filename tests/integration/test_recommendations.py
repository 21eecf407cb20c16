"""Recommendations from outside, on the session's service: a new user gets the tenant's
popular items, their events change what they get within a second (towards what they
engaged with, never what they have seen), filters hold, tenants never move each other's
answers, bad requests name the field, and the recommender is a version like any."""

from __future__ import annotations

import copy
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import operator_headers
from tests.integration.conftest import Service, entry, wait_ready

pytestmark = [pytest.mark.integration]

CATEGORIES = {"hats": "Hatters", "socks": "Woolly", "mugs": "Clayworks", "lamps": "Glowe"}
WORDS = {
    "hats": ["felt", "fedora", "beanie"],
    "socks": ["wool", "ankle", "hiking"],
    "mugs": ["ceramic", "coffee", "travel"],
    "lamps": ["desk", "floor", "reading"],
}


def _items() -> list[dict[str, Any]]:
    out = []
    for category, brand in CATEGORIES.items():
        for n in range(15):
            word = WORDS[category][n % 3]
            out.append(
                {
                    "id": f"{category}-{n}",
                    "text": {"title": f"{word} {category[:-1]} model {n}", "brand": brand},
                    "attributes": {"category": category, "brand": brand,
                                   "price": 10.0 + 5 * n, "in_stock": n % 4 != 0},
                }
            )  # fmt: skip
    return out


def _tenant(service: Service) -> dict[str, str]:
    """A fresh tenant's key with the scopes recommendations need."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with service.client(headers=operator_headers()) as admin:
        made = admin.post("/admin/v1/tenants", json={"name": tenant, "id": tenant})
        assert made.status_code == 201, made.text
        scopes = ["search", "catalog", "events", "recommend", "embed"]
        body = {"scopes": scopes, "may_pin": True}
        key = admin.post(f"/admin/v1/tenants/{tenant}/keys", json=body).json()
    return {"Authorization": f"Bearer {key['key']}"}


def _ready(client: httpx.Client, catalog: str) -> None:
    """Wait until the catalog answers recommendations from the model's index."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.post("/v1/recommendations", json={"user": "warm-up", "catalog": catalog})
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"recommendations never answered: {r.status_code} {r.text}")


@pytest.fixture(scope="module")
def shop(service: Service) -> dict[str, str]:
    """A tenant with one catalog, and its key's headers."""
    headers = _tenant(service)
    with service.client(headers=headers) as client:
        r = client.put("/v1/catalogs/shop/items", json={"items": _items()})
        assert r.status_code == 200, r.text
        _ready(client, "shop")
    return headers


def _recommend(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = client.post("/v1/recommendations", json=body, headers=headers)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _events(client: httpx.Client, user: str, items: list[str], kind: str) -> None:
    events = [{"user": user, "item": i, "type": kind} for i in items]
    r = client.post("/v1/events", json={"catalog": "shop", "events": events})
    assert r.status_code == 200, r.text


def _known(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """The first recommendation for `body`'s user from their features (source `model`),
    asked for until their events show; it must come within the promised second."""
    sent = time.monotonic()
    while True:
        doc = _recommend(client, body)
        took = time.monotonic() - sent
        if doc["source"] == "model" or took > 1.0:
            break
        time.sleep(0.05)
    assert doc["source"] == "model", doc
    assert took <= 1.0
    return doc


def test_a_new_user_gets_the_tenants_popular_items(service: Service, shop: dict[str, str]) -> None:
    with service.client(headers=shop) as client:
        for n in range(4):  # other users make two lamps the tenant's most engaged items
            _events(client, f"fan-{n}", ["lamps-3", "lamps-7"], "purchase")
        time.sleep(6)  # popular items are re-read every few seconds
        doc = _recommend(client, {"user": f"new-{uuid.uuid4().hex[:6]}", "k": 5})
    assert doc["source"] == "popular"
    assert doc["degraded"] is False
    assert doc["catalog"] == "shop"  # the tenant's only catalog
    assert {d["id"] for d in doc["data"][:2]} == {"lamps-3", "lamps-7"}
    assert len(doc["data"]) == 5
    with service.client(headers=shop) as client:
        socks = _recommend(client, {"user": "new-2", "k": 4, "filters": {"category": "socks"}})
    assert socks["source"] == "popular"
    assert len(socks["data"]) == 4
    assert {d["attributes"]["category"] for d in socks["data"]} == {"socks"}


def test_events_change_the_next_recommendations_within_a_second(
    service: Service, shop: dict[str, str]
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    engaged = ["hats-1", "hats-2", "hats-4", "hats-5"]
    with service.client(headers=shop) as client:
        before = _recommend(client, {"user": user, "k": 8})
        assert before["source"] == "popular"
        _events(client, user, engaged[:2], "purchase")
        _events(client, user, engaged[2:], "add_to_cart")
        after = _known(client, {"user": user, "k": 8})
    assert after["model"] == "recommender"
    assert after["version"] == "v1"
    assert after["index"]["space"] == "recommender/v1"
    ids = [d["id"] for d in after["data"]]
    assert ids != [d["id"] for d in before["data"]]
    assert not set(ids) & set(engaged), "exclude_seen is on by default"
    categories = Counter(d["attributes"]["category"] for d in after["data"])
    assert categories.most_common(1)[0][0] == "hats", categories
    scores = [d["score"] for d in after["data"]]
    assert scores == sorted(scores, reverse=True)
    with service.client(headers=shop) as client:
        seen_too = _recommend(client, {"user": user, "k": 15, "exclude_seen": False})
    assert set(engaged) & {d["id"] for d in seen_too["data"]}


def test_filters_hold_for_a_known_user(service: Service, shop: dict[str, str]) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    with service.client(headers=shop) as client:
        _events(client, user, ["mugs-1", "mugs-2"], "purchase")
        _known(client, {"user": user})
        body = {"user": user, "k": 6, "filters": {"category": "lamps", "price": {"lte": 50}}}
        doc = _recommend(client, body)
        in_stock = _recommend(client, {"user": user, "k": 10, "filters": {"in_stock": True}})
    assert doc["source"] == "model"
    assert doc["data"]
    assert all(d["attributes"]["category"] == "lamps" for d in doc["data"])
    assert all(d["attributes"]["price"] <= 50 for d in doc["data"])
    assert len(in_stock["data"]) == 10
    assert all(d["attributes"]["in_stock"] for d in in_stock["data"])


def test_the_item_in_context_steers_a_cold_user(service: Service, shop: dict[str, str]) -> None:
    with service.client(headers=shop) as client:
        doc = _recommend(client, {"user": "nobody-yet", "k": 5, "context": {"item": "socks-3"}})
    assert doc["source"] == "model"
    assert "socks-3" not in {d["id"] for d in doc["data"]}
    assert Counter(d["attributes"]["category"] for d in doc["data"]).most_common(1)[0][0] == "socks"


def test_one_tenants_events_never_move_anothers_answers(
    service: Service, shop: dict[str, str]
) -> None:
    other = _tenant(service)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with service.client(headers=other) as client:
        r = client.put("/v1/catalogs/shop/items", json={"items": _items()})
        assert r.status_code == 200, r.text
        _ready(client, "shop")
    with service.client(headers=shop) as client:
        _events(client, user, ["hats-1", "hats-2"], "purchase")
        _known(client, {"user": user})
    with service.client(headers=other) as client:
        theirs = _recommend(client, {"user": user})
    assert theirs["source"] == "popular"


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"k": 3}, "user", 400),
        ({"user": "u", "k": 0}, "k", 400),
        ({"user": "u", "k": 5000}, "k", 400),
        ({"user": "u", "filters": {"price": {"gte": "a"}}}, "filters.price.gte", 400),
        ({"user": "u", "extra": 1}, "extra", 400),
        ({"user": "u", "catalog": "bad name!"}, "catalog", 400),
        ({"user": "u", "catalog": "absent"}, "catalog", 404),
    ],
)
def test_bad_requests_name_the_field(
    service: Service, shop: dict[str, str], body: dict[str, Any], field: str, status: int
) -> None:
    with service.client(headers=shop) as client:
        r = client.post("/v1/recommendations", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]["message"]


def test_the_recommender_is_a_version_like_any(service: Service, shop: dict[str, str]) -> None:
    with service.client(headers=shop) as client:
        r = client.post(
            "/v1/recommendations", json={"user": "u"}, headers={"X-Model-Version": "v9"}
        )
        assert r.status_code == 404, r.text
        assert "version" in r.json()["error"]["message"]
        r = client.post("/v1/embeddings", json={"model": "recommender", "input": "hats"})
        assert r.status_code == 400, r.text
        assert "/v1/recommendations" in r.json()["error"]["message"]
    with service.client(headers=operator_headers()) as admin:
        card = admin.get("/v1/models/recommender").json()
    assert [v["name"] for v in card["versions"]] == ["v1"]
    assert card["versions"][0]["weight"] == 100
    assert card["versions"][0]["recent"]["requests"] > 0


def test_search_with_a_user_leans_to_their_affinities(
    service: Service, shop: dict[str, str]
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    with service.client(headers=shop) as client:
        # Socks: a plain search for "model" ranks none of them in its first five with
        # either version of the model (hats lead both; v2's five are all hats).
        _events(client, user, ["socks-3", "socks-6"], "purchase")
        _known(client, {"user": user})
        body = {"catalog": "shop", "query": "model", "k": 5}
        # One routing key for the three: the same version of the search model answers
        # each (without it, `user` would pick the stranger's by the split, and the plain
        # search's at random: 90/10 in the shipped config).
        one = {"X-Routing-Key": f"k-{user}"}
        plain = client.post("/v1/search", json=body, headers=one)
        mine = client.post("/v1/search", json={**body, "user": user}, headers=one)
        stranger = client.post("/v1/search", json={**body, "user": "nobody-at-all"}, headers=one)
    for r in (plain, mine, stranger):
        assert r.status_code == 200, r.text
    assert len({r.json()["index"]["space"] for r in (plain, mine, stranger)}) == 1
    assert plain.json()["index"]["personalized"] is False
    assert stranger.json()["index"]["personalized"] is False
    assert [d["id"] for d in stranger.json()["data"]] == [d["id"] for d in plain.json()["data"]]
    assert mine.json()["index"]["personalized"] is True

    def socks(r: httpx.Response) -> int:
        return sum(d["attributes"]["category"] == "socks" for d in r.json()["data"])

    assert socks(plain) == 0
    assert socks(mine) == 5


def test_a_second_version_is_shadowed_split_and_pinned_like_any(
    service: Service, shop: dict[str, str]
) -> None:
    """v2 (the same package under another name) added with a shadow: its item index is
    backfilled, the shadow copies agree fully, and a split and a pin reach it."""
    original = copy.deepcopy(service.config)
    config = copy.deepcopy(service.config)
    versions = config["applications"][0]["args"]["models"]["recommender"]["versions"]
    versions["v2"] = copy.deepcopy(versions["v1"])
    live = entry(config, "Ingress")["user_config"]
    live["traffic"]["recommender"] = {"v1": 100, "v2": 0}
    live["shadow"] = {"recommender": {"version": "v2", "fraction": 1.0}}
    user = f"u-{uuid.uuid4().hex[:8]}"
    service.redeploy(config)
    try:
        wait_ready(service)
        with service.client(headers=shop) as client:
            _ready(client, "shop")
            _events(client, user, ["mugs-2", "mugs-5"], "purchase")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # v2's index backfills in the background
                r = client.post("/v1/recommendations", json={"user": user},
                                headers={"X-Model-Version": "v2"})  # fmt: skip
                if r.status_code == 200:
                    break
                time.sleep(0.5)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == "v2"
            assert r.json()["index"]["space"] == "recommender/v2"
            # Copies run only in a recommendation worker with nothing waiting, once it
            # has indexed v2 too (its own backfill): until then they are dropped.
            deadline = time.monotonic() + 30
            with service.client(headers=operator_headers()) as admin:
                while True:
                    for _ in range(10):
                        assert _recommend(client, {"user": user})["version"] == "v1"
                    time.sleep(0.5)
                    card = admin.get("/v1/models/recommender").json()
                    pair = card["shadow"]["pairs"]["v1->v2"]
                    if pair["requests"] >= 5 or time.monotonic() > deadline:
                        break
        assert pair["requests"] >= 5, card["shadow"]
        assert pair["errors"] == 0
        assert pair["mean_cosine"] == 1.0  # the same package: the same items
        live["shadow"] = {}
        live["traffic"]["recommender"] = {"v1": 0, "v2": 100}
        service.redeploy(config)
        with service.client(headers=shop) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if _recommend(client, {"user": user})["version"] == "v2":
                    break
                time.sleep(0.3)
            assert _recommend(client, {"user": user})["version"] == "v2"
    finally:
        service.redeploy(original)
        wait_ready(service)


def test_concurrent_recommendations_are_answered_by_the_replicas_worker(
    service: Service, shop: dict[str, str]
) -> None:
    """Callers at once: the replica hands recommendations to its worker process, which
    answers what the replica answers on its own loop (the same stores, the same model),
    and says so in the metrics (`process="worker"`)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.test_metrics import scrape_until

    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    with service.client(headers=shop) as client:
        for n, user in enumerate(users):
            category = list(CATEGORIES)[n]
            _events(client, user, [f"{category}-1", f"{category}-2"], "purchase")
            _known(client, {"user": user, "k": 8})
        alone = {u: [d["id"] for d in _recommend(client, {"user": u, "k": 8})["data"]]
                 for u in users}  # fmt: skip

    def worker_answers(text: str) -> float:
        lines = [line for line in text.splitlines()
                 if line.startswith("ray_servekit_recommendations_total{")
                 and 'process="worker"' in line]  # fmt: skip
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def caller(n: int, deadline: float) -> list[tuple[str, list[str]]]:
        got = []
        with service.client(headers=shop) as client:
            while time.monotonic() < deadline:
                user = users[n % len(users)]
                r = client.post("/v1/recommendations", json={"user": user, "k": 8})
                assert r.status_code == 200, r.text
                got.append((user, [d["id"] for d in r.json()["data"]]))
        return got

    before = worker_answers(scrape_until(service, lambda _: True, 1))
    deadline = time.monotonic() + 8
    with ThreadPoolExecutor(16) as pool:
        answers = [a for f in [pool.submit(caller, n, deadline) for n in range(16)]
                   for a in f.result()]  # fmt: skip
    assert len(answers) > 100
    for user, ids in answers:
        assert ids == alone[user]
    text = scrape_until(service, lambda t: worker_answers(t) > before, 60)
    assert worker_answers(text) > before, "no recommendation was answered by a worker"
