"""The admin API and `GET /v1/usage` over HTTP, as an operator and tenant admins use
them: FastAPI's test client behind the real auth gate, the service's error handlers, a
real registry (SQLite and PostgreSQL), key cache, embedded limiter and usage meter; only
the replica is a stand-in."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from configs.schema import AuthSettings
from deployments.dataplane import CallRecord
from deployments.http import admin, hosted
from deployments.http.auth import AuthGate
from deployments.http.envelope import Envelope
from deployments.observability.logs import JsonFormatter
from deployments.tenancy.access import Access
from deployments.tenancy.admission import Admission
from deployments.tenancy.keys import KeyCache
from deployments.tenancy.usage import UsageMeter
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.registry_sql import open_registry
from tests.unit.deployments.fakes import RequestRecorder

SECRET = b"admin-http-secret"
OPERATOR = "operator-credential-for-admin-tests"
OP = {"Authorization": f"Bearer {OPERATOR}"}
LOG = logging.getLogger("test.admin_http")


@dataclass
class Service:
    client: TestClient
    access: Access
    url: str

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = OP if key is None else {"Authorization": f"Bearer {key}"}
        return self.client.request(method, path, headers=headers, **kw)

    def tenant(self, tenant_id: str, **limits: Any) -> None:
        body = {"name": tenant_id.title(), "id": tenant_id, "limits": limits}
        r = self.call("POST", "/admin/v1/tenants", json=body)
        assert r.status_code == 201, r.text

    def key(self, tenant_id: str, **body: Any) -> dict[str, Any]:
        r = self.call("POST", f"/admin/v1/tenants/{tenant_id}/keys", json=body)
        assert r.status_code == 201, r.text
        made: dict[str, Any] = r.json()
        return made


@pytest.fixture(params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    from deployments.http.api import api

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("pg_dsn")
    registry = open_registry(url)
    keys = KeyCache(registry, SECRET, OPERATOR, 60.0, LOG)
    keys.refresh()
    access = Access(
        AuthSettings(),
        registry,
        keys,
        Admission(EmbeddedLimiter(), True, LOG),
        UsageMeter(registry, 60.0, LOG),
    )

    async def admit(call: CallRecord, texts: int, field: str | None = None) -> None:
        if call.principal is not None:
            call.headers.update(await access.admission.admit(call.principal, texts, field))

    host = SimpleNamespace(
        access=access,
        envelope=Envelope(RequestRecorder(), LOG, access),
        plane=SimpleNamespace(admit=admit),
    )
    monkeypatch.setattr(hosted, "replica_host", lambda: host)
    monkeypatch.setattr(admin, "replica_host", lambda: host)
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)
    app.include_router(admin.router)
    client = TestClient(AuthGate(app, host), raise_server_exceptions=False)
    yield Service(client, access, url)
    registry.close()


def test_patching_one_limit_keeps_the_others(service: Service) -> None:
    """PATCH merges: `{"limits": {"requests_per_s": 100}}` raises the rate and keeps
    the monthly quota (it used to remove every limit the body left out); null removes
    one limit; an empty `limits` changes nothing."""
    service.tenant("acme", requests_per_s=5, texts_per_s=200, monthly_texts=10_000)
    r = service.call("PATCH", "/admin/v1/tenants/acme", json={"limits": {"requests_per_s": 100}})
    assert r.status_code == 200, r.text
    kept = {"requests_per_s": 100, "texts_per_s": 200, "monthly_texts": 10_000}
    assert r.json()["limits"] == kept
    assert service.call("GET", "/admin/v1/tenants/acme").json()["limits"] == kept
    cleared = service.call(
        "PATCH", "/admin/v1/tenants/acme", json={"limits": {"texts_per_s": None}}
    ).json()["limits"]
    assert cleared == {**kept, "texts_per_s": None}
    unchanged = service.call(
        "PATCH", "/admin/v1/tenants/acme", json={"limits": {}, "disabled": True}
    ).json()
    assert (unchanged["limits"], unchanged["disabled"]) == (cleared, True)
    # The replica's copy of the tenant's keys holds the merged limits at once.
    key = service.key("acme")
    who = service.access.keys.lookup(key["key"])
    assert who is None  # disabled
    service.call("PATCH", "/admin/v1/tenants/acme", json={"disabled": False})
    who = service.access.keys.lookup(key["key"])
    assert who is not None
    assert who.limits.monthly_texts == 10_000


def test_a_tenant_past_its_monthly_quota_still_reads_usage_and_revokes_keys(
    service: Service,
) -> None:
    """Admin calls take a request from the rate buckets but nothing from the monthly
    text quota, and are not refused by it: a tenant past its quota (lowered mid-month,
    or overshot by replicas) could neither read its usage nor revoke a leaked key
    until the month ended."""
    service.tenant("acme", requests_per_s=50, monthly_texts=100)
    admin_key = service.key("acme", scopes=["admin", "usage", "embed"])
    leaked = service.key("acme", scopes=["embed"])
    caller = service.access.keys.lookup(admin_key["key"])
    assert caller is not None
    asyncio.run(service.access.admission.admit(caller, 80))  # 80 of 100 texts used
    lowered = {"limits": {"monthly_texts": 50}}
    assert service.call("PATCH", "/admin/v1/tenants/acme", json=lowered).status_code == 200
    tenant_admin = admin_key["key"]
    usage = service.call("GET", "/v1/usage", tenant_admin)
    assert usage.status_code == 200, usage.text
    assert usage.headers["RateLimit-Policy"] == '"requests";q=50;w=1'
    assert service.call("GET", "/admin/v1/tenants/acme/usage", tenant_admin).status_code == 200
    revoked = service.call("DELETE", f"/admin/v1/tenants/acme/keys/{leaked['id']}", tenant_admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    assert service.access.keys.lookup(leaked["key"]) is None
    # The quota itself still holds for texts.
    again = service.access.keys.lookup(tenant_admin)
    assert again is not None
    with pytest.raises(Exception, match="monthly text quota"):
        asyncio.run(service.access.admission.admit(again, 1))


def test_another_tenants_tenant_keys_and_usage_are_404_to_a_tenant_admin(
    service: Service,
) -> None:
    service.tenant("acme")
    service.tenant("globex")
    mine = service.key("acme", scopes=["admin", "usage"])["key"]
    theirs = service.key("globex", scopes=["embed"])
    for method, path in (
        ("GET", "/admin/v1/tenants/globex"),
        ("GET", "/admin/v1/tenants/globex/keys"),
        ("GET", "/admin/v1/tenants/globex/usage"),
        ("POST", "/admin/v1/tenants/globex/keys"),
        ("DELETE", f"/admin/v1/tenants/globex/keys/{theirs['id']}"),
        ("DELETE", f"/admin/v1/tenants/acme/keys/{theirs['id']}"),
        ("POST", f"/admin/v1/tenants/acme/keys/{theirs['id']}/rotate"),
    ):
        r = service.call(method, path, mine, json={} if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.text)
    assert [t["id"] for t in service.call("GET", "/admin/v1/tenants", mine).json()] == ["acme"]
    assert service.access.keys.lookup(theirs["key"]) is not None  # untouched


def test_ids_holding_nul_are_404_not_500(service: Service) -> None:
    """PostgreSQL refuses text holding NUL; a path id with one was a 500."""
    service.tenant("acme")
    key_id = service.key("acme")["id"]
    for method, path in (
        ("GET", "/admin/v1/tenants/acme%00"),
        ("PATCH", "/admin/v1/tenants/acme%00"),
        ("GET", "/admin/v1/tenants/acme%00/keys"),
        ("POST", "/admin/v1/tenants/acme%00/keys"),
        ("GET", "/admin/v1/tenants/acme%00/usage"),
        ("DELETE", f"/admin/v1/tenants/acme/keys/{key_id}%00"),
        ("POST", f"/admin/v1/tenants/acme/keys/{key_id}%00/rotate"),
    ):
        body: dict[str, Any] | None = {} if method in ("POST", "PATCH") else None
        r = service.call(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)


def test_a_failed_key_write_logs_neither_the_key_nor_its_hash(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry failing while a key is stored is a 500 whose logged traceback
    carried the INSERT's bound values: the new key's hash among them."""
    service.tenant("acme")
    engine = create_engine(service.url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER full_disk BEFORE INSERT ON api_keys "
                    "BEGIN INSERT INTO gone_away VALUES (1); END"  # fails as it runs
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION full_disk() RETURNS trigger AS $$ BEGIN RAISE "
                    "EXCEPTION 'could not extend file' USING ERRCODE = '53100'; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER full_disk BEFORE INSERT ON api_keys "
                    "FOR EACH ROW EXECUTE FUNCTION full_disk()"
                )
            )
    engine.dispose()
    with caplog.at_level(logging.ERROR, LOG.name):
        r = service.call("POST", "/admin/v1/tenants/acme/keys", json={"name": "batch job"})
    assert r.status_code == 500
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "unhandled" in logged
    assert "INSERT INTO api_keys" in logged  # the failed statement, without its values
    assert not re.search(r"[0-9a-f]{64}", logged)  # no hash
    assert "sk-" not in logged  # nor the key's prefix
    assert "batch job" not in logged


def test_usage_is_counted_on_the_utc_day_it_was_served_and_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts either side of midnight UTC land on their own days; the default range is
    the month of today (UTC); a write that failed is written once, later."""
    service.tenant("acme")
    reader = service.key("acme", scopes=["usage"])["key"]
    meter = service.access.usage
    day = [date(2026, 11, 30)]
    meter.today = lambda: day[0]
    meter.add("acme", "minilm", 3, False)
    day[0] = date(2026, 12, 1)
    meter.add("acme", "minilm", 4, False)
    meter.add("acme", "minilm", 5, True)
    real_add = service.access.registry.add_usage
    failures = [RuntimeError("registry down")]

    def flaky(rows: Any) -> None:
        if failures:
            raise failures.pop()
        real_add(rows)

    monkeypatch.setattr(service.access.registry, "add_usage", flaky)
    asyncio.run(meter.flush())  # fails: kept
    asyncio.run(meter.flush())  # written once
    monkeypatch.setattr(admin, "_now", lambda: datetime(2026, 12, 1, 0, 30, tzinfo=UTC))
    december = service.call("GET", "/v1/usage", reader).json()
    assert (december["start"], december["end"]) == ("2026-12-01", "2026-12-01")
    minilm = [d for d in december["days"] if d["model"] == "minilm"]
    assert minilm == [
        {"day": "2026-12-01", "model": "minilm", "requests": 2, "texts": 4, "errors": 1}
    ]
    both = service.call("GET", "/v1/usage?start=2026-11-30", reader).json()
    by_day = {(d["day"], d["model"]): d["texts"] for d in both["days"]}
    assert by_day[("2026-11-30", "minilm")] == 3
    assert by_day[("2026-12-01", "minilm")] == 4


def test_a_disabled_tenants_keys_list_as_refused_until_it_is_enabled(service: Service) -> None:
    """A key's listed state is what its caller gets: the live keys of a disabled tenant
    were listed `active` while every call with them was a 401. They list as
    `tenant_disabled` (created, listed or rotated while it is), and `active` again
    once it is enabled; a revoked or an expired key keeps saying so either way."""
    service.tenant("acme")
    live = service.key("acme")
    gone = service.key("acme")
    short = service.key("acme", expires_in_s=1)
    assert service.call("DELETE", f"/admin/v1/tenants/acme/keys/{gone['id']}").status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=2)  # past the short key's end

    def states() -> dict[str, str]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(admin, "_now", lambda: later)
            keys = service.call("GET", "/admin/v1/tenants/acme/keys").json()
        return {k["id"]: k["state"] for k in keys}

    off = service.call("PATCH", "/admin/v1/tenants/acme", json={"disabled": True})
    assert off.json()["disabled"] is True
    made = service.key("acme")
    assert made["state"] == "tenant_disabled"
    r = service.call("POST", f"/admin/v1/tenants/acme/keys/{live['id']}/rotate", json={})
    assert r.status_code == 201, r.text
    rotated = r.json()
    assert rotated["state"] == "tenant_disabled"
    usable = (live, made, rotated)
    assert states() == {
        **{k["id"]: "tenant_disabled" for k in usable},
        gone["id"]: "revoked",
        short["id"]: "expired",
    }
    for key in usable:
        assert service.access.keys.lookup(key["key"]) is None  # as listed: refused
    service.call("PATCH", "/admin/v1/tenants/acme", json={"disabled": False})
    assert states() == {
        **{k["id"]: "active" for k in usable},
        gone["id"]: "revoked",
        short["id"]: "expired",
    }
    for key in usable:
        assert service.access.keys.lookup(key["key"]) is not None  # as listed: accepted


def test_rotating_a_revoked_or_expired_key_says_so_and_a_revocation_wins_a_race(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotating a key the list shows as revoked or expired was a 404 "no such active
    key"; it is a 409 saying which. A key revoked while it was being rotated (a leak
    revoked as a rotation job ran) got a replacement that stayed live; the revocation
    stands and the replacement is revoked too."""
    service.tenant("acme")
    gone = service.key("acme")
    service.call("DELETE", f"/admin/v1/tenants/acme/keys/{gone['id']}")
    short = service.key("acme", expires_in_s=1)
    later = datetime.now(UTC) + timedelta(seconds=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(admin, "_now", lambda: later)
        for key, state in ((gone, "revoked"), (short, "expired")):
            r = service.call("POST", f"/admin/v1/tenants/acme/keys/{key['id']}/rotate", json={})
            assert r.status_code == 409, r.text
            assert r.json()["error"]["message"].startswith(f"key: {state}; ")
    unknown = service.call("POST", "/admin/v1/tenants/acme/keys/key_nope/rotate", json={})
    assert (unknown.status_code, unknown.json()["error"]["message"]) == (404, "key: no such key")

    leaked = service.key("acme")
    registry = service.access.registry
    read = registry.get_key

    def read_then_revoked(tenant_id: str, key_id: str) -> Any:
        found = read(tenant_id, key_id)
        monkeypatch.setattr(registry, "get_key", read)  # once
        registry.revoke_key(tenant_id, key_id, datetime.now(UTC))  # the other admin
        return found

    monkeypatch.setattr(registry, "get_key", read_then_revoked)
    r = service.call("POST", f"/admin/v1/tenants/acme/keys/{leaked['id']}/rotate", json={})
    assert r.status_code == 409, r.text
    assert "revoked while it was rotated" in r.json()["error"]["message"]
    listed = service.call("GET", "/admin/v1/tenants/acme/keys").json()
    others = {k["id"]: k["state"] for k in listed if k["id"] not in (gone["id"], short["id"])}
    assert len(others) == 2  # the leaked key and the replacement it got
    assert set(others.values()) == {"revoked"}
    assert service.access.keys.lookup(leaked["key"]) is None


def test_a_tenant_past_its_live_keys_gets_a_409_and_rotations_still_work(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replica keeps each live key in memory: a tenant admin issuing keys without
    end grew them all. Revoked keys make room; a rotation replaces a key."""
    monkeypatch.setattr(admin, "MAX_LIVE_KEYS", 2)
    service.tenant("acme")
    first, second = service.key("acme"), service.key("acme")
    r = service.call("POST", "/admin/v1/tenants/acme/keys", json={"name": "third"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["message"] == (
        "key: 2 live keys, the most a tenant holds; revoke one first"
    )
    rotated = service.call("POST", f"/admin/v1/tenants/acme/keys/{first['id']}/rotate", json={})
    assert rotated.status_code == 201, rotated.text
    service.call("DELETE", f"/admin/v1/tenants/acme/keys/{second['id']}")
    service.call("DELETE", f"/admin/v1/tenants/acme/keys/{first['id']}")
    assert service.key("acme")["state"] == "active"  # room again
    assert service.access.keys.lookup(second["key"]) is None


def test_rotating_a_rotated_key_names_its_replacement(service: Service) -> None:
    """A second rotation (a re-run script) is a 409 that said "rotate the key that
    replaced it" without saying which, and the list did not show which key replaced
    which; the 409 names it, and the list shows when a key was rotated and by what."""
    service.tenant("acme")
    old = service.key("acme", name="nightly")
    path = f"/admin/v1/tenants/acme/keys/{old['id']}/rotate"
    first = service.call("POST", path, json={"overlap_s": 60})
    assert first.status_code == 201, first.text
    new_id = first.json()["id"]
    assert (first.json()["rotated_at"], first.json()["replaced_by"]) == (None, None)
    again = service.call("POST", path, json={})
    assert again.status_code == 409, again.text
    message = again.json()["error"]["message"]
    assert message == f"key: already rotated; rotate {new_id}, the key that replaced it"
    listed = {k["id"]: k for k in service.call("GET", "/admin/v1/tenants/acme/keys").json()}
    assert listed[old["id"]]["replaced_by"] == new_id
    rotated_at = datetime.fromisoformat(listed[old["id"]]["rotated_at"])
    ends = datetime.fromisoformat(listed[old["id"]]["expires_at"])
    assert ends - rotated_at == timedelta(seconds=60)
    assert (listed[new_id]["rotated_at"], listed[new_id]["replaced_by"]) == (None, None)
    assert (
        service.call("POST", f"/admin/v1/tenants/acme/keys/{new_id}/rotate", json={}).status_code
        == 201
    )


def test_traffic_at_the_tenants_rate_limit_leaves_its_admin_calls_their_own_bucket(
    service: Service,
) -> None:
    """A tenant's traffic at its requests_per_s (a batch job, or a leaked key hammering
    the API) took every token the admin calls needed: its admin could not list keys,
    revoke the leaked one or read usage (429) until the traffic stopped. Admin calls
    take from a bucket of their own at the tenant's rate, so they are still bounded."""
    service.tenant("acme", requests_per_s=2)
    admin_key = service.key("acme", scopes=["admin", "usage", "embed"])["key"]
    leaked = service.key("acme", scopes=["embed"])
    hammer = service.access.keys.lookup(leaked["key"])
    assert hammer is not None

    def drain() -> None:
        async def run() -> None:
            for _ in range(5):
                try:
                    await service.access.admission.admit(hammer, 0)
                except Exception:
                    return

        asyncio.run(run())

    drain()
    listed = service.call("GET", "/admin/v1/tenants/acme/keys", admin_key)
    assert listed.status_code == 200, listed.text
    drain()
    revoked = service.call("DELETE", f"/admin/v1/tenants/acme/keys/{leaked['id']}", admin_key)
    assert revoked.status_code == 200, revoked.text
    assert revoked.headers["RateLimit-Policy"] == '"requests";q=2;w=1'
    third = service.call("GET", "/v1/usage", admin_key)  # the admin bucket holds 2
    assert third.status_code == 429, third.text
    assert third.headers["Retry-After"] == "1"


def test_the_dashboard_and_index_reads_are_admin_calls(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's data and `/admin/v1/search/indexes` took from the tenant's
    traffic buckets (the dashboard) or were not limited at all (the indexes, whose
    `stored=` counts a version's vectors in the store): both are admin calls now, from
    the bucket of the tenant's admin calls, never emptied by its traffic."""
    from deployments.http import dashboard, search_routes
    from deployments.http.api import api

    host = hosted.replica_host()
    host.args = SimpleNamespace(auth=AuthSettings())
    for module in (dashboard, search_routes):
        monkeypatch.setattr(module, "replica_host", lambda: host)

    async def scrape() -> tuple[float, list[Any], int]:
        return 0.0, [], 0

    monkeypatch.setattr(dashboard, "_scrape", scrape)
    monkeypatch.setattr(search_routes, "_service", lambda host: None)
    monkeypatch.setattr(search_routes, "indexes_doc", lambda service, call, counts: {})
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)
    app.include_router(dashboard.router)
    app.include_router(search_routes.router)
    client = TestClient(AuthGate(app, host), raise_server_exceptions=False)

    service.tenant("acme", requests_per_s=2)
    admin_key = service.key("acme", scopes=["admin", "embed"])["key"]
    hammer = service.access.keys.lookup(service.key("acme", scopes=["embed"])["key"])
    assert hammer is not None

    async def drain() -> None:
        for _ in range(5):
            try:
                await service.access.admission.admit(hammer, 0)
            except Exception:
                return

    asyncio.run(drain())
    headers = {"Authorization": f"Bearer {admin_key}"}
    answers = [
        client.get(path, headers=headers)
        for path in ("/admin/v1/dashboard/metrics", "/admin/v1/search/indexes")
    ]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[1].headers["RateLimit-Policy"] == '"requests";q=2;w=1'
    third = client.get("/admin/v1/search/indexes", headers=headers)  # the admin bucket holds 2
    assert third.status_code == 429, third.text
