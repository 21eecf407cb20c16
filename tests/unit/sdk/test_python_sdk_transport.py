"""The Python SDK's transport layer against scripted HTTP answers (httpx.MockTransport):
settings from arguments and the environment, each method's request line, retries with
backoff, jitter and `Retry-After`, what is never repeated, and how errors are mapped."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import servekit_client
from servekit_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    DeprecatedRouteWarning,
    GatewayTimeoutError,
    InternalServerError,
    InvalidArgumentError,
    InvalidEventsError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    UnexpectedResponseError,
    _async,
    _sync,
)
from servekit_client._retry import retry_after_s
from servekit_client._routes import ROUTES
from servekit_client.models import Limits
from tests.conftest import free_port

Handler = Callable[[httpx.Request], httpx.Response]
SEARCH_OUT = {"object": "search.result", "catalog": "c", "model": "m", "version": "v1",
              "index": {}, "data": []}  # fmt: skip
EVENTS_OUT = {"object": "events.result", "accepted": 1, "rejected": 0, "seq": 3,
              "features_updated": True, "errors": []}  # fmt: skip
EMBEDDINGS_OUT = {"object": "list", "model": "minilm",
                  "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
                  "usage": {"prompt_tokens": 1, "total_tokens": 1}}  # fmt: skip
ITEM_GONE = {"error": {"code": "not_found", "message": "item: no such item in this catalog",
                       "request_id": "rid-from-body"}}  # fmt: skip
FAST = RetryPolicy(max_retries=3, initial_delay_s=0.2, max_delay_s=1.0, rng=random.Random(7))

# Each method with arguments, and the path it must call.
CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]] = {
    "embed": ((["a"],), {"model": "m"}, "/v1/embeddings"),
    "search": (("c", "q"), {}, "/v1/search"),
    "recommend": (("u-1",), {"k": 3}, "/v1/recommendations"),
    "list_catalogs": ((), {}, "/v1/catalogs"),
    "configure_catalog": (("c",), {"hybrid": True}, "/v1/catalogs/c"),
    "upsert_items": (("c", [{"id": "i", "text": {"t": "x"}}]), {}, "/v1/catalogs/c/items"),
    "get_item": (("c", "a b"), {}, "/v1/catalogs/c/items/a%20b"),
    "delete_item": (("c", "i"), {}, "/v1/catalogs/c/items/i"),
    "send_events": (([{"user": "u", "item": "i", "type": "view"}],), {}, "/v1/events"),
    "get_features": (("user", "u"), {}, "/v1/features/user/u"),
    "list_models": ((), {}, "/v1/models"),
    "get_model": (("minilm",), {}, "/v1/models/minilm"),
    "get_usage": ((), {"start": "2026-01-01"}, "/v1/usage"),
    "admin.list_tenants": ((), {}, "/admin/v1/tenants"),
    "admin.create_tenant": (("Acme",), {"id": "acme"}, "/admin/v1/tenants"),
    "admin.get_tenant": (("acme",), {}, "/admin/v1/tenants/acme"),
    "admin.update_tenant": (("acme",), {"disabled": True}, "/admin/v1/tenants/acme"),
    "admin.list_keys": (("acme",), {}, "/admin/v1/tenants/acme/keys"),
    "admin.create_key": (("acme",), {"scopes": ["search"]}, "/admin/v1/tenants/acme/keys"),
    "admin.revoke_key": (("acme", "k1"), {}, "/admin/v1/tenants/acme/keys/k1"),
    "admin.rotate_key": (("acme", "k1"), {}, "/admin/v1/tenants/acme/keys/k1/rotate"),
    "admin.tenant_usage": (("acme",), {}, "/admin/v1/tenants/acme/usage"),
    "admin.search_indexes": ((), {}, "/admin/v1/search/indexes"),
    "admin.dashboard_state": ((), {}, "/admin/v1/dashboard/state"),
    "admin.dashboard_metrics": ((), {}, "/admin/v1/dashboard/metrics"),
}


def _answer(status: int, doc: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=doc, headers=headers)


def _error(status: int, code: str, message: str = "m", **headers: str) -> httpx.Response:
    doc = {"error": {"code": code, "message": message, "request_id": "rid-from-body"}}
    return _answer(status, doc, headers)


class Script:
    """Answers requests in order; records what was sent."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of the retry loops, recorded instead of slept."""
    waits: list[float] = []

    async def asleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(_sync, "_sleep", waits.append)
    monkeypatch.setattr(_async, "_sleep", asleep)
    return waits


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("SERVEKIT_URL", raising=False)


def _client(script: Handler, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", FAST)
    return Client("sk-test", "http://svc", transport=httpx.MockTransport(script), **kwargs)


def _transport(kind: type[Client | AsyncClient], script: Handler) -> Any:
    """A scripted transport; httpx's serves the sync and the async client alike."""
    return httpx.MockTransport(script)


def _call(client: Client | AsyncClient, name: str, *args: Any, **kwargs: Any) -> Any:
    target: Any = client.admin if name.startswith("admin.") else client
    result = getattr(target, name.removeprefix("admin."))(*args, **kwargs)
    if isinstance(client, AsyncClient):
        return asyncio.run(result)
    return result


# ---- settings ------------------------------------------------------------------


def test_key_and_url_come_from_the_arguments_first() -> None:
    script = Script(_answer(200, SEARCH_OUT))
    client = _client(script)
    client.search("c", "q")
    sent = script.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert str(sent.url) == "http://svc/v1/search"
    assert sent.headers["user-agent"].startswith("servekit-client-python/")


def test_key_and_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_API_KEY", "sk-env\n")
    monkeypatch.setenv("SERVEKIT_URL", "https://api.example.com/servekit/")
    script = Script(_answer(200, SEARCH_OUT))
    client = Client(transport=httpx.MockTransport(script))
    client.search("c", "q")
    assert script.requests[0].headers["authorization"] == "Bearer sk-env"
    assert str(script.requests[0].url) == "https://api.example.com/servekit/v1/search"


@pytest.mark.parametrize("kind", [Client, AsyncClient])
@pytest.mark.parametrize("key", [None, "", " \n"])
def test_no_key_at_all_is_refused_at_construction(
    kind: type[Client | AsyncClient], key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the TypeScript client: no key given and none in the environment (or an empty
    one) is refused when the client is made, not answered 401 by the first call."""
    expected = r"^no API key: pass `api_key` or set SERVEKIT_API_KEY \(api_key=False sends none\)$"
    with pytest.raises(InvalidArgumentError, match=expected):
        kind(key, "http://svc")
    if key is not None:
        return
    for empty in ("", "  "):
        monkeypatch.setenv("SERVEKIT_API_KEY", empty)
        with pytest.raises(InvalidArgumentError, match=expected):
            kind(base_url="http://svc")


@pytest.mark.parametrize("key", [True, 0, b"sk-bytes"])
def test_a_key_that_is_not_a_string_is_refused(key: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^api_key: must be a string, None or False$"):
        Client(key, "http://svc")


def test_api_key_false_sends_no_authorization_even_with_one_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVEKIT_API_KEY", "sk-env")
    script = Script(_answer(200, SEARCH_OUT))
    Client(False, transport=httpx.MockTransport(script)).search("c", "q")
    assert "authorization" not in script.requests[0].headers
    assert str(script.requests[0].url) == "http://127.0.0.1:8000/v1/search"


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client("k", "localhost:8000")


def test_bad_retry_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="initial_delay_s"):
        RetryPolicy(initial_delay_s=10, max_delay_s=1)


def test_timeouts_reach_every_request() -> None:
    script = Script(_answer(200, SEARCH_OUT), _answer(200, SEARCH_OUT))
    client = _client(script, timeout=2.5)
    client.search("c", "q")
    client.with_options(timeout=httpx.Timeout(9.0)).search("c", "q")
    first, second = (r.extensions["timeout"] for r in script.requests)
    assert first == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert second == {"connect": 9.0, "read": 9.0, "write": 9.0, "pool": 9.0}


# ---- every method's request ----------------------------------------------------


def test_every_route_has_a_call_here() -> None:
    assert set(CALLS) == set(ROUTES)


@pytest.mark.parametrize("kind", [Client, AsyncClient])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_method_calls_its_route(name: str, kind: type[Client | AsyncClient]) -> None:
    args, kwargs, want = CALLS[name]
    script = Script(_error(404, "not_found"))
    transport: Any = httpx.MockTransport(script)
    client = kind("k", "http://svc", transport=transport)
    with pytest.raises(NotFoundError):
        _call(client, name, *args, **kwargs)
    (sent,) = script.requests
    assert sent.method == ROUTES[name].method
    assert sent.url.raw_path.decode().split("?")[0] == want


def test_bodies_leave_out_what_was_not_given() -> None:
    script = Script(_answer(200, SEARCH_OUT))
    _client(script).search("c", "q", k=3, model_version="v2", routing_key="u-1")
    sent = script.requests[0]
    assert json.loads(sent.content) == {"catalog": "c", "query": "q", "k": 3}
    assert (sent.headers["x-model-version"], sent.headers["x-routing-key"]) == ("v2", "u-1")


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_tenant_patch_sends_the_limits_named_and_null_to_remove_one(
    kind: type[Client | AsyncClient],
) -> None:
    """The service keeps the limits a PATCH leaves out and removes one sent as null;
    the SDK dropped every None, so no limit could be removed."""
    tenant = {"id": "acme", "name": "Acme", "created_at": "2026-12-01T00:00:00+00:00",
              "limits": {"requests_per_s": 5.0}, "disabled": False}  # fmt: skip
    script = Script(*[_answer(200, tenant) for _ in range(4)])
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    _call(client, "admin.update_tenant", "acme", limits={"monthly_texts": None})
    _call(client, "admin.update_tenant", "acme", limits=Limits(monthly_texts=None))
    _call(client, "admin.update_tenant", "acme", limits=Limits(requests_per_s=5))
    _call(client, "admin.update_tenant", "acme", disabled=True)
    sent = [json.loads(r.content) for r in script.requests]
    assert sent == [
        {"limits": {"monthly_texts": None}},
        {"limits": {"monthly_texts": None}},  # the model's field set to None: removed
        {"limits": {"requests_per_s": 5.0}},
        {"disabled": True},
    ]


def test_event_times_and_days_are_sent_as_text() -> None:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    script = Script(_answer(200, EVENTS_OUT), _error(404, "not_found"))
    client = _client(script)
    client.send_events([{"user": "u", "item": "i", "type": "view", "timestamp": at}])
    with pytest.raises(NotFoundError):
        client.get_usage(start=at.date(), end=at.date())
    assert json.loads(script.requests[0].content)["events"][0]["timestamp"].startswith(
        "2026-12-01T09:30:00"
    )
    assert script.requests[1].url.params["start"] == "2026-12-01"


# ---- retries -------------------------------------------------------------------


def test_429_waits_retry_after_then_succeeds(sleeps: list[float]) -> None:
    script = Script(_error(429, "rate_limited", **{"Retry-After": "2"}), _answer(200, SEARCH_OUT))
    assert _client(script).search("c", "q").catalog == "c"
    assert len(script.requests) == 2
    (wait,) = sleeps
    assert 2.0 <= wait <= 2.2


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    when = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s(when, now) == 30.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0.0
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_503_backs_off_exponentially_with_jitter(sleeps: list[float]) -> None:
    script = Script(*[_error(503, "overloaded")] * 4)
    with pytest.raises(ServiceUnavailableError) as caught:
        _client(script).search("c", "q")
    assert len(script.requests) == 4  # the call and max_retries=3 retries
    assert caught.value.status == 503
    # Each wait lies in [ceiling/2, ceiling], the ceiling doubling up to max_delay_s.
    for wait, ceiling in zip(sleeps, (0.2, 0.4, 0.8), strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(sleeps)) == 3


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=20, initial_delay_s=0.5, max_delay_s=4.0, rng=random.Random(1))
    waits = [policy.backoff_s(9) for _ in range(200)]
    assert all(2.0 <= w <= 4.0 for w in waits)
    assert max(waits) - min(waits) > 1.0


def test_a_retry_after_beyond_the_bound_is_not_waited_for(sleeps: list[float]) -> None:
    script = Script(
        _error(429, "rate_limited", "monthly text quota exceeded", **{"Retry-After": "86400"})
    )
    with pytest.raises(RateLimitError) as caught:
        _client(script).search("c", "q")
    assert sleeps == []
    assert caught.value.retry_after_s == 86400
    assert caught.value.code == "rate_limited"


def test_no_retries_when_max_retries_is_zero(sleeps: list[float]) -> None:
    script = Script(_error(503, "overloaded"))
    with pytest.raises(ServiceUnavailableError):
        _client(script, max_retries=0).search("c", "q")
    assert (len(script.requests), sleeps) == (1, [])


def test_every_attempt_carries_the_same_request_id(sleeps: list[float]) -> None:
    script = Script(_error(503, "overloaded"), _answer(200, SEARCH_OUT))
    _client(script).search("c", "q")
    ids = {r.headers["x-request-id"] for r in script.requests}
    assert len(ids) == 1
    assert len(ids.pop()) == 32


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_server_errors_are_not_repeated(status: int, sleeps: list[float]) -> None:
    script = Script(_error(status, "x"))
    with pytest.raises(InternalServerError):
        _client(script).search("c", "q")
    assert len(script.requests) == 1


def test_events_are_repeated_on_429_and_503_the_service_did_not_act(sleeps: list[float]) -> None:
    events = [{"user": "u", "item": "i", "type": "view"}]
    script = Script(
        _error(429, "rate_limited", **{"Retry-After": "1"}),
        _error(503, "unavailable", "events: the event log is unavailable; nothing was kept"),
        _answer(200, EVENTS_OUT),
    )
    assert _client(script).send_events(events).accepted == 1  # type: ignore[list-item]
    assert len(script.requests) == 3


def test_a_connection_refused_is_repeated_for_any_route(sleeps: list[float]) -> None:
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, _answer(200, EVENTS_OUT))
    events: Any = [{"user": "u", "item": "i", "type": "view"}]
    assert _client(script).send_events(events).seq == 3
    assert len(script.requests) == 2


def test_a_lost_answer_is_repeated_for_a_search(sleeps: list[float]) -> None:
    script = Script(httpx.ReadTimeout("timed out"), _answer(200, SEARCH_OUT))
    assert _client(script).search("c", "q").version == "v1"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    "lost",
    [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("closed"), httpx.ReadError("reset")],
)
@pytest.mark.parametrize("name", ["admin.create_tenant", "admin.create_key", "admin.rotate_key"])
def test_a_lost_answer_is_never_repeated_for_a_call_that_may_have_acted(
    name: str, lost: Exception, sleeps: list[float]
) -> None:
    args, kwargs, _ = CALLS[name]
    script = Script(lost, _answer(500, {}))
    with pytest.raises(APIConnectionError) as caught:
        _call(_client(script), name, *args, **kwargs)
    assert len(script.requests) == 1
    assert sleeps == []
    assert caught.value.request_id == script.requests[0].headers["x-request-id"]
    assert isinstance(caught.value, APITimeoutError) == isinstance(lost, httpx.TimeoutException)


def test_the_async_client_retries_the_same_way(sleeps: list[float]) -> None:
    script = Script(
        _error(429, "rate_limited", **{"Retry-After": "1"}),
        httpx.ConnectError("refused"),
        _answer(200, SEARCH_OUT),
    )

    async def run() -> str:
        async with AsyncClient(
            "k", "http://svc", retry=FAST, transport=httpx.MockTransport(script)
        ) as c:
            return (await c.search("c", "q")).version

    assert asyncio.run(run()) == "v1"
    assert len(script.requests) == 3
    assert 1.0 <= sleeps[0] <= 1.1
    assert 0.1 <= sleeps[1] <= 0.4


def test_the_async_client_never_repeats_a_lost_tenant_creation(sleeps: list[float]) -> None:
    script = Script(httpx.ReadTimeout("timed out"))
    client = AsyncClient("k", "http://svc", retry=FAST, transport=httpx.MockTransport(script))
    with pytest.raises(APITimeoutError):
        asyncio.run(client.admin.create_tenant("Acme"))
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "lost",
    [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("closed"), httpx.ReadError("reset")],
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_lost_event_batch_is_resent_as_it_was(
    kind: type[Client | AsyncClient], lost: Exception, sleeps: list[float]
) -> None:
    """The service stores a batch once per X-Request-ID (the same on every attempt), so
    a batch whose answer was lost is resent unchanged: no Idempotency-Key unless asked."""
    script = Script(lost, _answer(200, EVENTS_OUT))
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    assert _call(client, "send_events", [{"user": "u", "item": "i", "type": "view"}]).seq == 3
    first, again = script.requests
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert again.content == first.content
    assert "idempotency-key" not in first.headers


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_an_idempotency_key_is_sent_on_every_attempt(
    kind: type[Client | AsyncClient], sleeps: list[float]
) -> None:
    script = Script(httpx.ReadTimeout("timed out"), _answer(200, EVENTS_OUT))
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    events = [{"user": "u", "item": "i", "type": "view"}]
    _call(client, "send_events", events, idempotency_key="order-7/events")
    assert [r.headers["idempotency-key"] for r in script.requests] == ["order-7/events"] * 2


@pytest.mark.parametrize("key", ["", "x" * 129, "café", "a\nb", " key", 7])
def test_an_idempotency_key_that_cannot_be_sent_is_refused_before_sending(key: Any) -> None:
    script = Script()
    with pytest.raises(InvalidArgumentError) as caught:
        _client(script).send_events(
            [{"user": "u", "item": "i", "type": "view"}], idempotency_key=key
        )
    assert str(caught.value).startswith("idempotency_key: ")
    assert not (isinstance(key, str) and key.strip() and key in str(caught.value))
    assert script.requests == []


def test_an_unreachable_service_is_a_connection_error(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_retries=1, initial_delay_s=0.05, max_delay_s=0.1)
    client = Client("sk-x", f"http://127.0.0.1:{free_port()}", retry=policy)
    with pytest.raises(APIConnectionError) as caught:
        client.list_models()
    assert "ConnectError" in str(caught.value)
    assert len(caught.value.request_id) == 32
    assert len(sleeps) == 1


# ---- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, servekit_client.BadRequestError),
        (401, servekit_client.AuthenticationError),
        (403, servekit_client.PermissionDeniedError),
        (404, servekit_client.NotFoundError),
        (405, servekit_client.MethodNotAllowedError),
        (413, servekit_client.PayloadTooLargeError),
        (422, servekit_client.UnprocessableEntityError),
        (500, servekit_client.InternalServerError),
        (504, GatewayTimeoutError),
    ],
)
def test_each_status_has_its_exception(status: int, cls: type[Exception]) -> None:
    script = Script(_error(status, "some_code", "k: at most 100"))
    with pytest.raises(cls) as caught:
        _client(script).search("c", "q")
    error: Any = caught.value
    assert (error.status, error.code, error.message) == (status, "some_code", "k: at most 100")
    assert error.request_id == "rid-from-body"
    assert str(error) == f"{status} some_code: k: at most 100 (request id rid-from-body)"


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        (
            lambda: _error(400, "invalid_request", "items.0.attributes.price: NaN"),
            "items.0.attributes.price",
        ),
        (
            lambda: _error(400, "invalid_request", "header.x-routing-key: too long"),
            "header.x-routing-key",
        ),
        (lambda: _error(404, "not_found", "item: no such item in this catalog"), "item"),
        (lambda: _error(404, "not_found", "no such route"), None),
        (lambda: httpx.Response(400, text="k: bad"), None),  # not servekit's: no field
        (lambda: httpx.Response(400, json={"error": "k: bad"}), None),
    ],
    ids=["nested", "header", "resource", "none", "proxy-text", "not-the-envelope"],
)
def test_an_error_names_the_field_its_message_names_first(answer: Any, field: str | None) -> None:
    with pytest.raises(servekit_client.APIStatusError) as caught:
        _client(Script(answer())).search("c", "q")
    assert caught.value.field == field


def test_a_proxys_error_page_still_says_status_and_request_id() -> None:
    page = httpx.Response(502, text="<html>Bad Gateway</html>", headers={"X-Request-ID": "rid-h"})
    with pytest.raises(InternalServerError) as caught:
        _client(Script(page)).search("c", "q")
    assert (caught.value.status, caught.value.code) == (502, "http_502")
    assert caught.value.request_id == "rid-h"
    assert "Bad Gateway" in caught.value.message


def test_an_empty_error_falls_back_to_the_request_id_sent() -> None:
    script = Script(httpx.Response(500))
    with pytest.raises(InternalServerError) as caught:
        _client(script).search("c", "q")
    assert caught.value.request_id == script.requests[0].headers["x-request-id"]
    assert caught.value.message == "Internal Server Error"


def test_invalid_events_carry_what_was_kept() -> None:
    doc = {
        "error": {
            "code": "invalid_events",
            "message": "events.1.type: bad (1 of 2 accepted)",
            "request_id": "r",
        },
        **EVENTS_OUT,
        "rejected": 1,
        "errors": [{"index": 1, "field": "events.1.type", "message": "bad"}],
    }
    with pytest.raises(InvalidEventsError) as caught:
        _client(Script(_answer(400, doc))).send_events([])
    result = caught.value.result
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.errors[0].field == "events.1.type"


def test_a_success_of_the_wrong_shape_is_named() -> None:
    script = Script(_answer(200, {"object": "search.result"}))
    with pytest.raises(UnexpectedResponseError, match="catalog: Field required"):
        _client(script).search("c", "q")


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_embeddings_say_the_version_that_served_them(kind: type[Client | AsyncClient]) -> None:
    """The body (OpenAI's shape) names only the model asked for; the version that served
    the call comes in `X-Model-Version`, and a traffic split may vary it per call."""
    script = Script(
        _answer(200, EMBEDDINGS_OUT, {"X-Model-Version": "v2"}),
        _answer(200, EMBEDDINGS_OUT, {"X-Model-Version": "v1"}),
        _answer(200, EMBEDDINGS_OUT),
    )
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    served = [_call(client, "embed", "x", model="minilm") for _ in range(3)]
    assert [e.version for e in served] == ["v2", "v1", None]  # None: the answer did not say
    assert served[0].model == "minilm"
    assert served[0].model_extra == {}
    assert served[0].model_dump()["version"] == "v2"


def test_unknown_response_fields_are_kept() -> None:
    script = Script(_answer(200, {**SEARCH_OUT, "took_ms": 3}))
    result = _client(script).search("c", "q")
    assert result.model_extra == {"took_ms": 3}


def test_a_deprecated_route_warns_with_its_sunset() -> None:
    headers = {"Deprecation": "@1767225600", "Sunset": "Wed, 01 Jul 2026 00:00:00 GMT"}
    script = Script(_answer(200, SEARCH_OUT, headers))
    with pytest.warns(DeprecatedRouteWarning, match="POST /v1/search is deprecated.*01 Jul 2026"):
        _client(script).search("c", "q")


def test_the_deprecation_warning_shows_under_default_filters(tmp_path: Path) -> None:
    """Python's default filters hide a `DeprecationWarning` raised outside `__main__`
    (a backend's module calling the client); the route's warning must still show."""
    answer = f"httpx.Response(200, json={SEARCH_OUT!r}, headers={{'Deprecation': '@1767225600'}})"
    (tmp_path / "backend.py").write_text(
        "import httpx\n"
        "from servekit_client import Client\n"
        "def call():\n"
        f"    transport = httpx.MockTransport(lambda request: {answer})\n"
        "    Client(api_key='k', base_url='http://t', transport=transport).search('c', 'q')\n"
    )
    (tmp_path / "main.py").write_text("import backend\nbackend.call()\n")
    run = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
    )
    assert "DeprecatedRouteWarning: POST /v1/search is deprecated" in run.stderr


# ---- what a proxy's 503, a lost delete, odd ids and days do ------------------------


@pytest.mark.parametrize("name", ["admin.create_tenant", "admin.create_key", "admin.rotate_key"])
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_proxys_503_is_not_repeated_for_a_call_that_may_have_acted(
    name: str, kind: type[Client | AsyncClient], sleeps: list[float]
) -> None:
    """A proxy may answer 503 after it passed the request on: only servekit's own 503
    (its error envelope: nothing was done) is repeated for these calls."""
    args, kwargs, _ = CALLS[name]
    page = httpx.Response(503, text="upstream connect error or disconnect/reset before headers")
    script = Script(page, _answer(500, {}))
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    with pytest.raises(ServiceUnavailableError) as caught:
        _call(client, name, *args, **kwargs)
    assert caught.value.code == "http_503"
    assert len(script.requests) == 1
    assert sleeps == []


def test_a_proxys_503_is_repeated_for_a_read(sleeps: list[float]) -> None:
    script = Script(httpx.Response(503, text="<html>busy</html>"), _answer(200, SEARCH_OUT))
    assert _client(script).search("c", "q").version == "v1"
    assert len(script.requests) == 2


def test_a_proxys_503_is_repeated_for_an_event_batch(sleeps: list[float]) -> None:
    """The repeat carries the batch's key (its request id), so it is stored once."""
    script = Script(httpx.Response(503, text="<html>busy</html>"), _answer(200, EVENTS_OUT))
    assert _client(script).send_events([{"user": "u", "item": "i", "type": "view"}]).seq == 3
    assert len({r.headers["x-request-id"] for r in script.requests}) == 1
    assert len(script.requests) == 2


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_delete_whose_answer_was_lost_is_done_when_the_repeat_finds_nothing(
    kind: type[Client | AsyncClient], sleeps: list[float]
) -> None:
    script = Script(httpx.ReadTimeout("timed out"), _error(404, "not_found", "item: no such item"))
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    done = _call(client, "delete_item", "c", "sku-1")
    assert (done.id, done.deleted) == ("sku-1", True)
    assert len(script.requests) == 2
    # Without a lost answer first, an item already gone is still NotFoundError.
    gone = Script(_error(404, "not_found", "item: no such item"))
    again = kind("sk-test", "http://svc", transport=_transport(kind, gone), retry=FAST)
    with pytest.raises(NotFoundError):
        _call(again, "delete_item", "c", "sku-1")
    # A connection refused (never sent) is no lost answer either.
    refused = Script(httpx.ConnectError("refused"), _error(404, "not_found", "item: gone"))
    third = kind("sk-test", "http://svc", transport=_transport(kind, refused), retry=FAST)
    with pytest.raises(NotFoundError):
        _call(third, "delete_item", "c", "sku-1")


@pytest.mark.parametrize(
    "not_the_item",  # each a function: a response is read once
    [
        lambda: httpx.Response(404, text="Not Found"),  # a proxy's page
        lambda: httpx.Response(404, json={"message": "no route"}),  # a proxy's JSON
        lambda: httpx.Response(404, json={"error": "not found"}),  # not servekit's envelope
        lambda: _error(404, "not_found", "no such route"),  # servekit: a route it lacks
        lambda: _error(404, "not_found", "no such route (search is off)"),
    ],
    ids=["text", "json", "error-string", "no-such-route", "search-off"],
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_lost_delete_is_not_done_by_a_404_that_is_not_about_the_item(
    kind: type[Client | AsyncClient],
    not_the_item: Callable[[], httpx.Response],
    sleeps: list[float],
) -> None:
    """Only servekit's own `not_found` naming the missing resource says the item is
    gone; any other 404 says nothing of it, so the call raises."""
    script = Script(httpx.ReadTimeout("timed out"), not_the_item())
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    with pytest.raises(NotFoundError):
        _call(client, "delete_item", "c", "sku-1")
    assert len(script.requests) == 2


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_delete_after_a_proxys_503_is_done_when_the_repeat_finds_nothing(
    kind: type[Client | AsyncClient], sleeps: list[float]
) -> None:
    """A proxy may answer 503 after passing the delete on: the attempt may have acted,
    like one whose answer was lost. servekit's own 503 did nothing: a 404 after it is
    the item's absence, raised."""
    page = httpx.Response(503, text="upstream connect error or disconnect/reset before headers")
    script = Script(page, _answer(404, ITEM_GONE))
    client = kind("sk-test", "http://svc", transport=_transport(kind, script), retry=FAST)
    done = _call(client, "delete_item", "c", "sku-1")
    assert (done.id, done.deleted) == ("sku-1", True)
    assert len(script.requests) == 2
    refused = Script(_error(503, "overloaded", "queue full"), _answer(404, ITEM_GONE))
    again = kind("sk-test", "http://svc", transport=_transport(kind, refused), retry=FAST)
    with pytest.raises(NotFoundError):
        _call(again, "delete_item", "c", "sku-1")
    assert len(refused.requests) == 2


@pytest.mark.parametrize("item_id", ["", ".", ".."])
def test_an_id_a_url_cannot_carry_is_refused_before_sending(item_id: str) -> None:
    script = Script()
    with pytest.raises(ValueError, match="item_id"):
        _client(script).get_item("c", item_id)
    assert script.requests == []


def test_odd_characters_in_ids_are_sent_as_one_segment() -> None:
    item = {"id": "x", "text": {}, "attributes": {}, "updated_at": None}
    script = Script(*[_answer(200, item)] * 3)
    client = _client(script)
    for item_id in ("a/b", "...", "x?y#z%"):
        client.get_item("c", item_id)
    assert [r.url.raw_path for r in script.requests] == [
        b"/v1/catalogs/c/items/a%2Fb",
        b"/v1/catalogs/c/items/...",
        b"/v1/catalogs/c/items/x%3Fy%23z%25",
    ]


def test_a_datetime_is_sent_as_its_utc_day() -> None:
    usage = {"tenant_id": "t", "start": "2026-01-01", "end": "2026-01-02",
             "days": [], "requests": 0, "texts": 0, "errors": 0}  # fmt: skip
    script = Script(_answer(200, usage), _answer(200, usage))
    client = _client(script)
    late = datetime(2026, 1, 1, 23, 30, tzinfo=UTC) - timedelta(hours=-1)  # 00:30 UTC, 2 Jan
    client.get_usage(start=late.astimezone(), end=datetime(2026, 1, 2, 9, 0))
    client.get_usage(start=datetime(2026, 1, 2, 3, 0, tzinfo=UTC))
    params = [dict(r.url.params) for r in script.requests]
    assert params == [{"start": "2026-01-02", "end": "2026-01-02"}, {"start": "2026-01-02"}]


def test_closing_a_with_options_client_keeps_the_parents_connections() -> None:
    script = Script(_answer(200, SEARCH_OUT), _answer(200, SEARCH_OUT))
    client = _client(script)
    with client.with_options(timeout=5) as quick:
        quick.search("c", "q")
    assert client.search("c", "q").version == "v1"
    client.close()


def test_errors_survive_pickling_and_copying() -> None:
    import copy
    import pickle

    script = Script(_error(404, "not_found", "item: no such item"))
    with pytest.raises(NotFoundError) as caught:
        _client(script).get_item("c", "i")
    for again in (pickle.loads(pickle.dumps(caught.value)), copy.copy(caught.value)):
        assert type(again) is NotFoundError
        assert (again.status, again.code, again.request_id) == (404, "not_found", "rid-from-body")
        assert str(again) == str(caught.value)
