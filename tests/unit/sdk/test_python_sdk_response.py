"""What an answer's headers said, as the Python SDK gives it: `.response` on every result
(the request id, the model version, the rate limit, status and headers), a list answer
as a `ResponseList`, and the rate limit on errors too; against scripted answers
(`httpx.MockTransport`)."""

from __future__ import annotations

import asyncio
import copy
import pickle
import random
from typing import Any

import httpx
import pytest

from servekit_client import (
    AsyncClient,
    Client,
    RateLimit,
    RateLimitError,
    ResponseInfo,
    ResponseList,
    RetryPolicy,
)
from servekit_client.models import SearchResult
from tests.unit.sdk.test_python_sdk_transport import EMBEDDINGS_OUT, SEARCH_OUT, Script, _answer

FAST = RetryPolicy(max_retries=3, initial_delay_s=0.0, max_delay_s=0.0, rng=random.Random(7))
TENANT = {"id": "acme", "name": "Acme", "created_at": "2026-12-01T00:00:00Z", "limits": {},
          "disabled": False}  # fmt: skip
# What servekit sends for a caller whose tightest limit is 10 requests a second.
LIMITED = {
    "X-Request-ID": "rid-of-the-service",
    "RateLimit": '"requests";r=7;t=1',
    "RateLimit-Policy": '"requests";q=10;w=1',
}


def _client(kind: type[Client | AsyncClient], script: Script) -> Any:
    transport: Any = httpx.MockTransport(script)
    return kind("sk-test", "http://svc", transport=transport, retry=FAST)


def _call(client: Client | AsyncClient, name: str, *args: Any, **kwargs: Any) -> Any:
    target: Any = client.admin if name.startswith("admin.") else client
    result = getattr(target, name.removeprefix("admin."))(*args, **kwargs)
    return asyncio.run(result) if isinstance(client, AsyncClient) else result


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    from servekit_client import _async, _sync

    async def asleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(_sync, "_sleep", lambda seconds: None)
    monkeypatch.setattr(_async, "_sleep", asleep)


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_result_says_its_request_id_version_and_rate_limit(
    kind: type[Client | AsyncClient],
) -> None:
    script = Script(_answer(200, EMBEDDINGS_OUT, {**LIMITED, "X-Model-Version": "v2"}))
    vectors = _call(_client(kind, script), "embed", "x", model="minilm")
    info = vectors.response
    assert isinstance(info, ResponseInfo)
    assert (info.status, info.request_id, info.model_version) == (200, "rid-of-the-service", "v2")
    assert info.rate_limit == RateLimit(
        policy="requests", remaining=7, reset_s=1, limit=10, window_s=1
    )
    assert info.headers["ratelimit-policy"] == '"requests";q=10;w=1'
    assert vectors.version == "v2"


def test_without_those_headers_the_request_id_is_the_one_sent() -> None:
    script = Script(_answer(200, SEARCH_OUT))
    info = _client(Client, script).search("c", "q").response
    assert info.request_id == script.requests[0].headers["x-request-id"]
    assert (info.model_version, info.rate_limit) == (None, None)


def test_the_response_is_the_answer_that_succeeded_after_a_retry() -> None:
    doc = {"error": {"code": "rate_limited", "message": "m"}}
    refused = _answer(429, doc, {"Retry-After": "0"})
    script = Script(refused, _answer(200, SEARCH_OUT, {"X-Model-Version": "v1"}))
    info = _client(Client, script).search("c", "q").response
    assert (info.status, info.model_version) == (200, "v1")
    assert info.request_id == script.requests[1].headers["x-request-id"]


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_list_answer_is_a_list_with_its_response(kind: type[Client | AsyncClient]) -> None:
    script = Script(_answer(200, [TENANT], LIMITED), _answer(200, [], LIMITED))
    client = _client(kind, script)
    tenants = _call(client, "admin.list_tenants")
    assert isinstance(tenants, ResponseList)
    assert isinstance(tenants, list)
    assert [t.id for t in tenants] == ["acme"]
    assert tenants == [tenants[0]]  # compares as the plain list it is
    assert tenants.response.request_id == "rid-of-the-service"
    keys = _call(client, "admin.list_keys", "acme")
    assert keys == []
    assert keys.response.rate_limit.remaining == 7
    again = pickle.loads(pickle.dumps(tenants))
    assert (again, again.response) == (tenants, tenants.response)


def test_equal_bodies_are_equal_results_whatever_their_headers() -> None:
    """A repeat answered as the first (an event batch under its idempotency key) is
    equal to it, though each answer has its own request id."""
    script = Script(
        _answer(200, SEARCH_OUT, {"X-Request-ID": "first"}),
        _answer(200, SEARCH_OUT, {"X-Request-ID": "second"}),
    )
    client = _client(Client, script)
    first, second = client.search("c", "q"), client.search("c", "q")
    assert first == second
    assert (first.response.request_id, second.response.request_id) == ("first", "second")
    assert "response" not in first.model_dump()
    assert "rid" not in repr(first)
    assert "first" not in repr(first)


def test_a_model_not_returned_by_a_call_has_no_response() -> None:
    built = SearchResult.model_validate(SEARCH_OUT)
    assert built.response is None
    client = _client(Client, Script(_answer(200, SEARCH_OUT)))
    assert copy.deepcopy(client.search("c", "q")).response is None


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_delete_done_by_an_earlier_attempt_has_the_repeats_response(
    kind: type[Client | AsyncClient],
) -> None:
    gone = {"error": {"code": "not_found", "message": "item: no such item in this catalog"}}
    script = Script(httpx.ReadTimeout("timed out"), _answer(404, gone, LIMITED))
    done = _call(_client(kind, script), "delete_item", "c", "sku-1")
    assert done.deleted is True
    assert (done.response.status, done.response.request_id) == (404, "rid-of-the-service")


def test_a_429_says_the_policy_that_refused_it() -> None:
    refused = {
        "Retry-After": "3",
        "RateLimit": '"texts";r=0;t=3',
        "RateLimit-Policy": '"requests";q=10;w=1, "texts";q=64;w=2',
    }
    doc = {"error": {"code": "rate_limited", "message": "m", "request_id": "rid-429"}}
    script = Script(_answer(429, doc, refused))
    client = _client(Client, script).with_options(max_retries=0)
    with pytest.raises(RateLimitError) as caught:
        client.search("c", "q")
    error = caught.value
    assert error.request_id == "rid-429"
    assert error.rate_limit == RateLimit("texts", 0, reset_s=3, limit=64, window_s=2)
    assert error.retry_after_s == 3


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"RateLimit": "garbage ;;"}, RateLimit("garbage", None, None, None, None)),
        ({"RateLimit": ""}, None),
        ({"RateLimit": "=1"}, None),
        ({"RateLimit": '"monthly";r=12;t=86400', "RateLimit-Policy": '"monthly";q=1000;w=2592000'},
         RateLimit("monthly", 12, 86400, 1000, 2592000)),
        ({"RateLimit": '"a";r=1', "RateLimit-Policy": '"b";q=5;w=1'},
         RateLimit("a", 1, None, None, None)),
        ({"RateLimit": 'tok;t=2;r=3;extra="x"'}, RateLimit("tok", 3, 2, None, None)),
    ],
)  # fmt: skip
def test_rate_limit_headers_are_read_as_far_as_they_are_readable(
    headers: dict[str, str], expected: RateLimit | None
) -> None:
    assert RateLimit.from_headers(httpx.Headers(headers)) == expected
