"""What the Python SDK refuses before sending anything, and what it never shows: values an
HTTP header cannot carry (a routing key, a pinned version, the API key), numbers JSON
cannot carry, text UTF-8 cannot carry (a lone surrogate), base URLs that are not
http(s); and the API key kept out of every error text, traceback and repr, even when a
transport's own error text echoes it."""

from __future__ import annotations

import asyncio
import json
import math
import traceback
from datetime import datetime
from typing import Any

import httpx
import pytest

from servekit_client import (
    APIConnectionError,
    AsyncClient,
    Client,
    InvalidArgumentError,
    RetryPolicy,
    ServekitError,
    _async,
    _sync,
)
from tests.unit.sdk.test_python_sdk_transport import EMBEDDINGS_OUT, Script, _answer

SECRET = "sk-live-0123456789abcdef"
SEARCH_OUT = {"object": "search.result", "catalog": "c", "model": "m", "version": "v1",
              "index": {}, "data": []}  # fmt: skip
FAST = RetryPolicy(max_retries=3, initial_delay_s=0.0, max_delay_s=0.0)


@pytest.fixture(autouse=True)
def _no_environment_and_no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("SERVEKIT_URL", raising=False)

    async def asleep(seconds: float) -> None:
        pass

    monkeypatch.setattr(_sync, "_sleep", lambda seconds: None)
    monkeypatch.setattr(_async, "_sleep", asleep)


def _client(kind: type[Client | AsyncClient], script: Script, key: str = SECRET) -> Any:
    return kind(key, "http://svc", transport=httpx.MockTransport(script), retry=FAST)


def _run(result: Any) -> Any:
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


# ---- header-bound parameters ---------------------------------------------------

# Each model-running method with arguments; `routing_key` / `model_version` are added.
MODEL_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "embed": (("x",), {"model": "m"}),
    "search": (("c", "q"), {}),
    "recommend": (("u",), {}),
}
# Not visible ASCII, or changed by HTTP on the way (outer spaces are dropped).
NOT_A_HEADER_VALUE = ["josé", "Łukasz", "用户", "a\nb", "a\rb", "tab\there", "\x00", " u-1", "u-1 "]


@pytest.mark.parametrize("value", NOT_A_HEADER_VALUE)
@pytest.mark.parametrize("param", ["routing_key", "model_version"])
@pytest.mark.parametrize("name", sorted(MODEL_CALLS))
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_value_a_header_cannot_carry_is_refused_before_sending(
    kind: type[Client | AsyncClient], name: str, param: str, value: str
) -> None:
    script = Script()
    args, kwargs = MODEL_CALLS[name]
    client = _client(kind, script)
    with pytest.raises(InvalidArgumentError) as caught:
        _run(getattr(client, name)(*args, **kwargs, **{param: value}))
    error = caught.value
    assert isinstance(error, ServekitError)  # the README: every exception is one
    assert isinstance(error, ValueError)  # and an argument refused, as Python's own are
    assert not isinstance(error, APIConnectionError)
    assert str(error).startswith(f"{param}: ")
    assert value.strip() not in str(error)  # never echoed (a routing key is often a user id)
    assert script.requests == []  # nothing sent, so nothing retried


def test_the_refusal_says_where_and_what_to_do() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        _client(Client, Script()).embed("x", model="m", routing_key="josé")
    assert str(caught.value) == (
        "routing_key: cannot be sent as the X-Routing-Key header: the character at index 3"
        " is not visible ASCII (hash or percent-encode such a value)"
    )


@pytest.mark.parametrize("value", [123, b"bytes"])
def test_a_header_bound_parameter_must_be_text(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^routing_key: must be a string$"):
        _client(Client, Script()).search("c", "q", routing_key=value)


def test_visible_ascii_and_inner_spaces_are_sent_as_given() -> None:
    script = Script(httpx.Response(200, json=SEARCH_OUT))
    _client(Client, script).search("c", "q", routing_key="Jose Smith #42 ~!", model_version="v2")
    sent = script.requests[0].headers
    assert (sent["x-routing-key"], sent["x-model-version"]) == ("Jose Smith #42 ~!", "v2")


# ---- numbers JSON cannot carry -------------------------------------------------


@pytest.mark.parametrize(
    ("number", "said"), [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")]
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_non_finite_attribute_is_refused_naming_the_field(
    kind: type[Client | AsyncClient], number: float, said: str
) -> None:
    script = Script()
    items: Any = [
        {"id": "a", "text": {"t": "x"}, "attributes": {"price": 1.0}},
        {"id": "b", "text": {"t": "y"}, "attributes": {"price": number}},
    ]
    with pytest.raises(InvalidArgumentError) as caught:
        _run(_client(kind, script).upsert_items("c", items))
    assert isinstance(caught.value, ServekitError)
    assert (
        str(caught.value)
        == f"items.1.attributes.price: {said} cannot be sent (JSON has no such number)"
    )
    assert script.requests == []


def test_non_finite_numbers_anywhere_in_a_body_are_refused() -> None:
    client = _client(Client, Script())
    with pytest.raises(InvalidArgumentError, match=r"^filters\.price\.lte: Infinity "):
        client.search("c", "q", filters={"price": {"lte": math.inf}})
    events: Any = [{"user": "u", "item": "i", "type": "view", "timestamp": math.nan}]
    with pytest.raises(InvalidArgumentError, match=r"^events\.0\.timestamp: NaN "):
        client.send_events(events)


CUT = "\U0001f600".encode("utf-16-le", "surrogatepass")[:2].decode("utf-16-le", "surrogatepass")


def _lone(where: str, subject: str = "") -> str:
    return f"{where}: {subject}has a lone surrogate, which is not Unicode text and cannot be sent"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.embed(["fine", f"red shoes {CUT}"], model="m"), _lone("input.1")),
        (
            lambda c: c.upsert_items("c", [{"id": "a", "text": {"title": f"x{CUT}"}}]),
            _lone("items.0.text.title"),
        ),
        (lambda c: c.search("c", "q", filters={f"b{CUT}": 1}), _lone("filters", "a key ")),
        (
            lambda c: c.send_events([{"user": "\udc00", "item": "i", "type": "view"}]),
            _lone("events.0.user"),
        ),
        (lambda c: c.get_item("c", f"sku{CUT}"), _lone("item_id")),
        (lambda c: c.admin.search_indexes(stored=f"minilm/{CUT}"), _lone("stored")),
        (lambda c: c.admin.update_tenant("t", limits={CUT: 1}), _lone("limits", "a key ")),
    ],
    ids=["input", "item-text", "filter-key", "event", "path", "query", "limits-key"],
)
def test_text_with_a_lone_surrogate_is_refused_naming_where(call: Any, message: str) -> None:
    """Not Unicode text: UTF-8 has no bytes for it (httpx raised UnicodeEncodeError,
    no ServekitError), so it is refused before sending, as the TypeScript SDK does."""
    script = Script()
    with pytest.raises(InvalidArgumentError) as caught:
        call(_client(Client, script))
    assert str(caught.value) == message
    assert script.requests == []


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_an_event_time_without_a_time_zone_is_refused_before_sending(
    kind: type[Client | AsyncClient],
) -> None:
    """The service refuses it (`needs a time zone`) and keeps the rest of the batch, so
    a batch stamped with `datetime.now()` was stored in part."""
    script = Script()
    now = datetime.now()  # no time zone: the mistake under test
    events: Any = [{"user": "u", "item": "i", "type": "view"},
                   {"user": "u", "item": "j", "type": "view", "timestamp": now}]  # fmt: skip
    with pytest.raises(InvalidArgumentError) as caught:
        _run(_client(kind, script).send_events(events))
    assert str(caught.value).startswith("events.1.timestamp: a datetime without a time zone ")
    assert script.requests == []


@pytest.mark.parametrize("param", ["models", "scopes"])
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_one_string_for_a_list_of_names_is_refused(
    param: str, kind: type[Client | AsyncClient]
) -> None:
    """A str is a sequence of strings too: `models="minilm"` was sent as the models
    m, i, n, i, l, m (a key that may call none), `scopes="search"` as six scopes."""
    script = Script()
    with pytest.raises(InvalidArgumentError) as caught:
        _run(_client(kind, script).admin.create_key("acme", **{param: "search"}))
    assert str(caught.value) == f"{param}: must be a list of strings, not one string"
    assert script.requests == []


def test_lists_and_tuples_of_names_are_sent_as_lists() -> None:
    script = Script(_answer(500, {}))
    with pytest.raises(ServekitError):
        _client(Client, script).admin.create_key("acme", models=("minilm",), scopes=["search"])
    assert json.loads(script.requests[0].content) == {"models": ["minilm"], "scopes": ["search"]}


def test_whole_emoji_other_scripts_and_line_separators_are_sent_as_they_are() -> None:
    script = Script(_answer(200, EMBEDDINGS_OUT))
    texts = ["\U0001f600 ok", "Łukasz café", "a\u2028b", "\uffff"]
    _client(Client, script).embed(texts, model="m")
    assert json.loads(script.requests[0].content)["input"] == texts


# ---- the API key ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [f"{SECRET}\nextra", f"sk-live\r\n{SECRET}", "sk-live josé", f"{SECRET} tail", "sk\x7f"]
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_key_a_header_cannot_carry_is_refused_at_construction(
    kind: type[Client | AsyncClient], key: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        kind(key, "http://svc")
    text = str(caught.value)
    assert text.startswith("api_key: ")
    assert "the key is not shown" in text
    for part in key.split():
        assert part not in text


def test_a_bad_key_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_API_KEY", f"{SECRET}\ninjected: 1")
    with pytest.raises(InvalidArgumentError, match=r"^SERVEKIT_API_KEY: ") as caught:
        Client(base_url="http://svc")
    assert SECRET not in str(caught.value)


def test_outer_whitespace_of_a_key_is_dropped() -> None:
    script = Script(httpx.Response(200, json=SEARCH_OUT))
    _client(Client, script, key=f"  {SECRET}\n").search("c", "q")
    assert script.requests[0].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_the_key_is_in_no_repr(kind: type[Client | AsyncClient]) -> None:
    client = _client(kind, Script())
    for shown in (
        repr(client),
        str(client),
        repr(client.with_options(timeout=3)),
        repr(client._settings),
        repr(vars(client)),
    ):
        assert SECRET not in shown, shown
    assert repr(client) == f"{kind.__name__}(base_url='http://svc')"


def _echoing_transport_error() -> httpx.LocalProtocolError:
    """What h11 says of a header value it refuses: the value, the key in it, echoed; and
    httpx chains the transport's own exception, with the same text, under it."""
    try:
        raise ValueError(f"Illegal header value b'Bearer {SECRET}'")
    except ValueError as inner:
        try:
            raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {SECRET}'") from inner
        except httpx.LocalProtocolError as outer:
            return outer


@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_transport_error_echoing_the_key_shows_it_nowhere(
    kind: type[Client | AsyncClient],
) -> None:
    script = Script(_echoing_transport_error())
    with pytest.raises(APIConnectionError) as caught:
        _run(_client(kind, script).search("c", "q"))
    error = caught.value
    assert str(error).startswith("connection failed (LocalProtocolError: Illegal header value")
    assert "Bearer [redacted]" in str(error)
    printed = "".join(traceback.format_exception(error))
    for shown in (str(error), repr(error), error.message, printed):
        assert SECRET not in shown
    assert error.__cause__ is None  # its text had the key: not chained
    assert len(script.requests) == 1  # an error of the request itself: not repeated


def test_a_bearer_token_is_redacted_even_when_it_is_not_this_clients_key() -> None:
    other = "sk-someone-elses-key"
    script = Script(httpx.ConnectError(f"proxy refused Authorization: Bearer {other}"))
    client = Client(False, "http://svc", transport=httpx.MockTransport(script), retry=FAST)
    client = client.with_options(max_retries=0)
    with pytest.raises(APIConnectionError) as caught:
        client.search("c", "q")
    assert other not in "".join(traceback.format_exception(caught.value))


def test_a_transport_error_without_the_key_keeps_its_cause() -> None:
    reset = httpx.ReadError("connection reset by peer")
    script = Script(reset)
    with pytest.raises(APIConnectionError) as caught:
        _client(Client, script).admin.create_tenant("Acme")  # never repeated: one attempt
    assert str(caught.value).startswith("connection failed (ReadError: connection reset by peer)")
    assert caught.value.__cause__ is reset


# ---- the base URL --------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["api.example.com", "localhost:8000", "http://", "https:///path", "ftp://x", " ", "//x"]
)
def test_a_base_url_that_is_not_http_with_a_host_is_refused(url: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^base_url: must be an http:// or https://"):
        Client("k", url)


def test_an_empty_base_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Client("k", "").base_url == "http://127.0.0.1:8000"
    monkeypatch.setenv("SERVEKIT_URL", "")
    assert Client("k").base_url == "http://127.0.0.1:8000"
    monkeypatch.setenv("SERVEKIT_URL", "api.example.com")
    with pytest.raises(InvalidArgumentError, match=r"^SERVEKIT_URL: "):
        Client("k")


def test_an_id_a_url_cannot_carry_is_a_servekit_error_too() -> None:
    with pytest.raises(InvalidArgumentError, match="item_id"):
        _client(Client, Script()).get_item("c", "..")
