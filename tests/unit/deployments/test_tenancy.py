"""Keys, rights, admission and metering of the data plane, on the embedded registry
and limiter (no Ray)."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from configs.schema import AuthSettings
from deployments.errors import Forbidden, RateLimited, Unavailable
from deployments.tenancy.access import UnsafeSettings, check_production
from deployments.tenancy.admission import (
    MAX_HEADER_S,
    Admission,
    ratelimit_headers,
    whole_seconds,
)
from deployments.tenancy.keys import KeyCache
from deployments.tenancy.principal import Principal
from deployments.tenancy.usage import UsageMeter
from stores.ratelimit import Decision, LimiterUnavailable
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.registry_sql import SqlRegistry, open_registry
from stores.secrets import MissingSecret, Secrets, load_secrets
from stores.tenants import SCOPES, RateLimits, UsageRow, issue_key

SECRET = b"unit-test-secret"
ADMIN = "operator-credential-for-tests"
LOG = logging.getLogger("test")
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture
def registry(tmp_path: Path) -> SqlRegistry:
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tenant("Acme", RateLimits(requests_per_s=5), "acme")
    reg.create_tenant("Globex", RateLimits(), "globex")
    return reg


def _key(registry: SqlRegistry, tenant: str = "acme", **kwargs: object) -> str:
    defaults: dict[str, object] = {"name": "k", "scopes": frozenset({"embed"}), "now": NOW}
    key, _ = issue_key(registry, SECRET, tenant, **{**defaults, **kwargs})  # type: ignore[arg-type]
    return key


def _cache(registry: SqlRegistry, now: datetime = NOW) -> KeyCache:
    cache = KeyCache(registry, SECRET, ADMIN, 1.0, LOG, clock=now.timestamp)
    cache.refresh()
    return cache


def test_a_key_resolves_to_its_tenant_and_rights(registry: SqlRegistry) -> None:
    key = _key(registry, models=frozenset({"minilm"}))
    who = _cache(registry).lookup(key)
    assert who is not None
    assert (who.tenant_id, who.scopes, who.models) == ("acme", frozenset({"embed"}), {"minilm"})
    assert who.limits.requests_per_s == 5  # the tenant's
    assert who.subject == "acme"
    assert not who.may_pin


def test_no_stored_key_or_cached_entry_shows_its_hash(registry: SqlRegistry) -> None:
    """A stored key, a snapshot and the key cache's entries printed their keyed hash in
    their repr: what a log line, an assertion message or a traceback's locals show."""
    _key(registry)
    snapshot = registry.snapshot()
    (stored,) = snapshot.keys
    cache = _cache(registry)
    shown = repr(snapshot) + repr(stored) + repr(cache._by_prefix)
    assert stored.key_hash not in shown
    assert stored.prefix in shown  # the visible part still is


def test_unknown_wrong_and_malformed_keys_resolve_to_nobody(registry: SqlRegistry) -> None:
    key = _key(registry)
    cache = _cache(registry)
    tampered = key[:-1] + ("a" if key[-1] != "a" else "b")
    for token in (tampered, "sk-", "nonsense", key + "x", "", "Bearer " + key):
        assert cache.lookup(token) is None
    other_secret = KeyCache(registry, b"another secret", None, 1.0, LOG, clock=NOW.timestamp)
    other_secret.refresh()
    assert other_secret.lookup(key) is None


def test_revoked_expired_and_disabled_are_refused(registry: SqlRegistry) -> None:
    revoked, expiring, disabled = _key(registry), _key(registry), _key(registry, "globex")
    cache = _cache(registry)
    assert all(cache.lookup(k) for k in (revoked, expiring, disabled))
    key_id = next(k.id for k in registry.list_keys("acme") if cache.lookup(revoked).key_id == k.id)  # type: ignore[union-attr]
    registry.revoke_key("acme", key_id, NOW)
    expiring_id = cache.lookup(expiring).key_id  # type: ignore[union-attr]
    registry.expire_key("acme", expiring_id, NOW + timedelta(seconds=30))
    registry.update_tenant("globex", disabled=True)
    assert cache.refresh()  # the generation moved
    assert cache.lookup(revoked) is None
    assert cache.lookup(expiring) is not None  # still inside its overlap
    assert cache.lookup(disabled) is None
    later = _cache(registry, NOW + timedelta(seconds=31))
    assert later.lookup(expiring) is None
    assert not cache.refresh()  # nothing changed since


def test_operator_credential_and_key_limits(registry: SqlRegistry) -> None:
    own = _key(registry, limits=RateLimits(texts_per_s=100))
    cache = _cache(registry)
    operator = cache.lookup(ADMIN)
    assert operator is not None
    assert operator.operator
    assert operator.admin
    who = cache.lookup(own)
    assert who is not None
    assert who.limits == RateLimits(requests_per_s=5)  # the tenant's, for the tenant
    assert who.subject == "acme"
    assert who.key_limits == RateLimits(texts_per_s=100)  # and its own, for itself
    assert who.key_subject == f"acme/{who.key_id}"


def test_keys_with_limits_of_their_own_share_their_tenants_quota(
    registry: SqlRegistry,
) -> None:
    """Three keys with a rate of their own and a tenant quota of 100 texts: 100 texts in
    all, not 100 each; a key whose own limits are far above the tenant's (made by the
    tenant's admin) gets no more than the tenant has; a key over its own limit is
    refused without taking from the tenant."""
    registry.update_tenant("acme", limits=RateLimits(monthly_texts=100))
    keys = [_key(registry, limits=RateLimits(requests_per_s=50)) for _ in range(3)]
    generous = _key(
        registry, limits=RateLimits(requests_per_s=1e6, texts_per_s=1e7, monthly_texts=10**15)
    )
    narrow = _key(registry, limits=RateLimits(monthly_texts=10))
    cache = _cache(registry)
    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)

    async def run() -> None:
        who = [cache.lookup(k) for k in (*keys, generous, narrow)]
        assert all(w is not None for w in who)
        with pytest.raises(RateLimited):  # over its own 10, the tenant's untouched
            await admission.admit(who[4], 11)  # type: ignore[arg-type]
        await admission.admit(who[0], 60)  # type: ignore[arg-type]
        await admission.admit(who[1], 40)  # type: ignore[arg-type]
        for caller in who[2:4]:
            with pytest.raises(RateLimited) as e:
                await admission.admit(caller, 1)  # type: ignore[arg-type]
            assert "monthly text quota" in e.value.message

    asyncio.run(run())


def test_serves_known_keys_while_the_registry_is_down(registry: SqlRegistry) -> None:
    key = _key(registry)
    cache = _cache(registry)

    def down() -> int:
        raise OSError("connection refused")

    registry.generation = down  # type: ignore[method-assign]
    asyncio.run(cache.refresh_now())
    assert cache.lookup(key) is not None


def test_rights() -> None:
    who = Principal("acme", "k", "sk-x", frozenset({"embed"}), frozenset({"m"}), False,
                    RateLimits(), "acme")  # fmt: skip
    who.require("embed")
    who.check_model("m")
    for check, names in (
        (lambda: who.require("admin"), "scope: this route needs the 'admin' scope"),
        (lambda: who.check_model("n"), "model: this API key may not call this model"),
        (who.check_pin, "version: this API key may not choose a version (may_pin)"),
    ):
        with pytest.raises(Forbidden) as e:
            check()
        assert e.value.status == 403
        assert e.value.message.startswith(names)
        assert "'n'" not in e.value.message  # the model asked for is not echoed


def test_only_the_operator_credential_is_the_operator() -> None:
    """A key of a tenant whose id reads `operator` (made before the id was reserved,
    or written to the registry by hand) is that tenant's key, nothing more."""
    from pydantic import ValidationError

    from deployments.http.admin import TenantCreate
    from deployments.tenancy.principal import operator_principal

    key = Principal("operator", "k", "sk-x", frozenset(SCOPES), None, True, RateLimits(),
                    "operator")  # fmt: skip
    assert not key.operator
    assert operator_principal().operator
    for reserved in ("operator", "other"):
        with pytest.raises(ValidationError) as e:
            TenantCreate(name="x", id=reserved)
        assert e.value.errors()[0]["loc"] == ("id",)
        assert "reserved" in e.value.errors()[0]["msg"]
    assert TenantCreate(name="x", id="others").id == "others"


def _principal(limits: RateLimits) -> Principal:
    return Principal("acme", "k", "sk-x", frozenset(SCOPES), None, False, limits, "acme")


def test_admission_headers_and_429() -> None:
    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)
    who = _principal(RateLimits(requests_per_s=2))

    async def run() -> None:
        first = await admission.admit(who, 1)
        assert first["RateLimit-Policy"] == '"requests";q=2;w=1'
        assert first["RateLimit"].startswith('"requests";r=1;')
        await admission.admit(who, 1)
        with pytest.raises(RateLimited) as e:
            await admission.admit(who, 1)
        assert e.value.status == 429
        assert int(e.value.headers["Retry-After"]) >= 1
        assert "RateLimit" in e.value.headers

    asyncio.run(run())


def test_a_request_no_wait_admits_is_a_400_that_names_the_field_and_the_most() -> None:
    """More texts than the texts bucket holds: never admitted, so a 400 with its own
    code, no `Retry-After` (a client honouring 429 would resend it forever), naming the
    field, whose limit and the most a request may carry; nothing is taken."""
    from deployments.http.envelope import error_response
    from deployments.tenancy.admission import TooLargeForRateLimit

    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)
    tenant = _principal(RateLimits(requests_per_s=1, texts_per_s=50))

    async def run() -> None:
        for field in ("input", "items"):
            with pytest.raises(TooLargeForRateLimit) as e:
                await admission.admit(tenant, 100, field)
            assert not isinstance(e.value, RateLimited)
            assert (e.value.status, e.value.code) == (400, "too_large_for_rate_limit")
            assert e.value.message == (
                f"{field}: 100 texts in one request, more than the tenant's texts_per_s "
                "limit (50/s) ever admits; send at most 50 per request"
            )
            assert e.value.headers == {"RateLimit-Policy": '"texts";q=50;w=1'}
        wire = error_response(e.value, "rid-1", oip=False)
        assert wire.status_code == 400
        assert "retry-after" not in wire.headers
        assert b'"code":"too_large_for_rate_limit"' in wire.body
        # nothing was taken: the one request a second and 50 texts are still there
        assert (await admission.admit(tenant, 50, "input"))["RateLimit"].startswith('"')
        with pytest.raises(RateLimited):  # now a plain wait: the request bucket is empty
            await admission.admit(tenant, 1, "input")

    asyncio.run(run())


def test_too_large_names_the_keys_own_limit_when_it_is_the_smaller() -> None:
    from deployments.tenancy.admission import TooLargeForRateLimit

    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)
    key = Principal("acme", "k", "sk-x", frozenset(SCOPES), None, False,
                    RateLimits(texts_per_s=2000), "acme",
                    key_limits=RateLimits(texts_per_s=20.5))  # fmt: skip
    with pytest.raises(TooLargeForRateLimit) as e:
        asyncio.run(admission.admit(key, 21))
    assert e.value.message == (
        "texts: 21 texts in one request, more than this API key's texts_per_s limit "
        "(20.5/s) ever admits; send at most 20 per request"
    )


def test_the_data_plane_names_the_requests_field() -> None:
    """Through the data plane as `/v1/embeddings`, the inference protocol and a catalog
    upsert call it: the 400 names their field."""
    from deployments.tenancy.admission import TooLargeForRateLimit
    from tests.unit.deployments.test_dataplane_cache import _call, _live, _plane

    plane, versions = _plane()
    asyncio.run(plane.configure(_live()))
    limits = RateLimits(texts_per_s=50)
    texts = [f"text {n}" for n in range(51)]
    for field in ("input", "inputs.0.data"):
        embed = plane.embed(_call("acme", limits), "minilm", texts, None, "v", None, field)
        with pytest.raises(TooLargeForRateLimit) as e:
            asyncio.run(embed)
        assert e.value.message.startswith(f"{field}: 51 texts in one request")
    with pytest.raises(TooLargeForRateLimit) as e:
        asyncio.run(plane.admit(_call("acme", limits), 51, "items"))
    assert e.value.message.startswith("items: 51 texts")
    assert versions["v1"].calls == []  # refused before any work
    out = asyncio.run(plane.embed(_call("acme", limits), "minilm", texts[:50], None, "v",
                                  None, "input"))  # fmt: skip
    assert out.vectors.shape == (50, 4)


def test_admission_without_limits_does_nothing() -> None:
    class Exploding:
        async def admit(
            self, subject: str, limits: RateLimits, texts: int, also: object = ()
        ) -> Decision:
            raise AssertionError("no limiter call without limits")

        async def close(self) -> None:
            return None

    admission = Admission(Exploding(), fail_open=True, log=LOG)
    assert asyncio.run(admission.admit(_principal(RateLimits()), 10)) == {}


@pytest.mark.parametrize("fail_open", [True, False])
def test_limiter_down(fail_open: bool) -> None:
    class Down:
        async def admit(
            self, subject: str, limits: RateLimits, texts: int, also: object = ()
        ) -> Decision:
            raise LimiterUnavailable("down")

        async def close(self) -> None:
            return None

    admission = Admission(Down(), fail_open=fail_open, log=LOG)
    who = _principal(RateLimits(requests_per_s=1))
    if fail_open:
        assert asyncio.run(admission.admit(who, 1)) == {}
    else:
        with pytest.raises(Unavailable):
            asyncio.run(admission.admit(who, 1))


def test_a_slow_rate_is_announced_over_the_window_it_refills_in() -> None:
    """0.5 requests/s: `RateLimit-Policy` said `q=1;w=1` (one a second, twice the
    limit); it says one per 2 s. A 400 for a request no wait admits named the bucket's
    size as the rate (`limit (1/s)` for 0.5/s); it names the rate as set."""
    from deployments.tenancy.admission import TooLargeForRateLimit

    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)
    who = _principal(RateLimits(requests_per_s=0.5, texts_per_s=0.2))

    async def run() -> None:
        first = await admission.admit(who, 1)
        assert first["RateLimit-Policy"] in ('"requests";q=1;w=2', '"texts";q=1;w=5')
        with pytest.raises(RateLimited) as e:
            await admission.admit(who, 0)
        assert e.value.headers["RateLimit-Policy"] == '"requests";q=1;w=2'
        assert e.value.headers["Retry-After"] == "2"
        with pytest.raises(TooLargeForRateLimit) as big:
            await admission.admit(who, 2, "input")
        assert big.value.message == (
            "input: 2 texts in one request, more than the tenant's texts_per_s limit "
            "(0.2/s) ever admits; send at most 1 per request"
        )
        assert big.value.headers == {"RateLimit-Policy": '"texts";q=1;w=5'}

    asyncio.run(run())
    fractional = Decision(True, 0, "texts", 2.5, 1.2, 0.5, window_s=1.0)
    assert ratelimit_headers(fractional)["RateLimit-Policy"] == '"texts";q=2;w=1'


def test_a_rate_stored_before_the_lower_bound_is_refused_with_finite_headers() -> None:
    """A subnormal rate (once accepted as `> 0`) made every wait infinite, and the
    headers' rounding raised: each request of that tenant was a 500."""
    admission = Admission(EmbeddedLimiter(), fail_open=True, log=LOG)
    who = _principal(RateLimits(requests_per_s=1e-310))

    async def run() -> None:
        first = await admission.admit(who, 1)
        assert first["RateLimit-Policy"] == f'"requests";q=1;w={MAX_HEADER_S}'
        with pytest.raises(RateLimited) as e:
            await admission.admit(who, 1)
        assert e.value.headers["Retry-After"] == str(MAX_HEADER_S)

    asyncio.run(run())
    assert whole_seconds(math.nan, 1) == whole_seconds(math.inf) == MAX_HEADER_S
    assert whole_seconds(-3.2) == 0
    assert whole_seconds(0.2, 1) == 1


def test_ratelimit_headers_monthly() -> None:
    decision = Decision(True, 0, "monthly", 1000, 250.5, 86_400.2)
    assert ratelimit_headers(decision) == {
        "RateLimit-Policy": '"monthly";q=1000;w=2592000',
        "RateLimit": '"monthly";r=250;t=86401',
    }


def test_usage_meter_counts_and_keeps_counts_when_a_write_fails(registry: SqlRegistry) -> None:
    day = date(2026, 12, 1)
    meter = UsageMeter(registry, 1.0, LOG, today=lambda: day)
    meter.add("acme", "minilm", 3, error=False)
    meter.add("acme", "minilm", 5, error=True)  # an error's texts are not counted
    real = registry.add_usage

    def failing(rows: list[UsageRow]) -> None:
        raise OSError("database down")

    registry.add_usage = failing  # type: ignore[method-assign]
    asyncio.run(meter.flush())
    assert meter.pending() == 2
    meter.add("acme", "minilm", 1, error=False)
    registry.add_usage = real  # type: ignore[method-assign]
    asyncio.run(meter.flush())
    assert meter.pending() == 0
    (row,) = registry.usage("acme", day, day)
    assert (row.requests, row.texts, row.errors) == (3, 4, 1)
    assert registry.usage("globex", day, day) == []


def _secrets(**values: str) -> Secrets:
    return load_secrets({f"SERVEKIT_{k.upper()}": v for k, v in values.items()})


GOOD = {"hmac_secret": "h" * 40, "admin_token": "a" * 40, "registry_dsn": "postgresql://db/x"}


@pytest.mark.parametrize(
    ("enabled", "values", "refused"),
    [
        (False, GOOD, "auth.enabled"),
        (True, {**GOOD, "hmac_secret": "dev-" + "h" * 40}, "hmac_secret"),
        (True, {**GOOD, "admin_token": "tiny-token"}, "admin_token"),
        (True, {k: v for k, v in GOOD.items() if k != "registry_dsn"}, "registry_dsn"),
        (True, {k: v for k, v in GOOD.items() if k != "hmac_secret"}, "hmac_secret"),
    ],
)
def test_production_refuses_unsafe_settings(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, values: dict[str, str], refused: str
) -> None:
    monkeypatch.setenv("SERVEKIT_ENV", "production")
    with pytest.raises((UnsafeSettings, MissingSecret), match=refused) as e:
        check_production(AuthSettings(enabled=enabled), _secrets(**values))
    assert all(v not in str(e.value) for v in values.values())


def test_production_accepts_real_secrets_and_development_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVEKIT_ENV", "production")
    check_production(AuthSettings(), _secrets(**GOOD))
    monkeypatch.delenv("SERVEKIT_ENV")
    check_production(AuthSettings(enabled=False), _secrets())
