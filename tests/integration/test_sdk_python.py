"""The Python SDK (sdk/python) against the running service: every route through the sync
and the async client, typed answers with no field the models do not know, the admin API
end to end, errors as exceptions, a 429 waited out; and the README's example, run in a
fresh virtual environment that installed the SDK from the repository."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from servekit_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InvalidEventsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from servekit_client.models import ApiModel
from tests.conftest import REPO_ROOT, TEST_SECRETS, TEST_TENANT, tenant_api_key
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration]

ITEMS: list[Any] = [
    {"id": "boot", "text": {"title": "Waterproof trail boot", "brand": "Acme"},
     "attributes": {"category": "shoes", "price": 120.0, "tags": ["trail"]}},
    {"id": "sock", "text": {"title": "Merino wool hiking sock"},
     "attributes": {"category": "socks", "price": 9.5}},
    {"id": "cap", "text": {"title": "Running cap"}, "attributes": {"category": "hats"}},
]  # fmt: skip


def _exact(value: Any) -> None:
    """No field anywhere in the answer that the models do not declare: the live shape is
    the typed one (also for routes the document leaves untyped)."""
    if isinstance(value, BaseModel):
        if isinstance(value, ApiModel):
            assert value.model_extra == {}, f"{type(value).__name__}: {value.model_extra}"
        for name in type(value).model_fields:
            _exact(getattr(value, name))
    elif isinstance(value, list):
        for v in value:
            _exact(v)


@pytest.fixture(scope="module")
def url(service: Service) -> str:
    """The running service's address."""
    return service.base_url


def _operator(url: str) -> Client:
    return Client(TEST_SECRETS["SERVEKIT_ADMIN_TOKEN"], url)


@pytest.fixture(scope="module")
def tenant_key(url: str) -> str:
    """A fresh tenant's key with every scope but pinning, made through the SDK."""
    tenant = f"sdk-{uuid.uuid4().hex[:8]}"
    with _operator(url) as op:
        op.admin.create_tenant("SDK tests", id=tenant)
        made = op.admin.create_key(tenant, scopes=["embed", "search", "catalog", "events",
                                                   "recommend", "usage", "admin"])  # fmt: skip
    return made.key


def test_the_sync_client_covers_the_v1_routes(url: str, tenant_key: str) -> None:
    catalog = f"sdk-{uuid.uuid4().hex[:8]}"
    user = f"u-{uuid.uuid4().hex[:8]}"
    with Client(tenant_key, url) as client:
        vectors = client.embed(["red running shoes", "trail boots"], model="minilm")
        assert [len(d.embedding) for d in vectors.data] == [384, 384]
        assert vectors.version in ("v1", "v2")  # X-Model-Version: the split's pick
        packed = client.embed("one", model="minilm", encoding_format="base64", routing_key=user)
        assert isinstance(packed.data[0].embedding, str)
        configured = client.configure_catalog(catalog, hybrid=True)
        assert (configured.name, configured.settings) == (catalog, {"hybrid": True})
        upserted = client.upsert_items(catalog, ITEMS)
        assert upserted.upserted == 3
        item = client.get_item(catalog, "boot")
        assert item.attributes["tags"] == ["trail"]
        found = client.search(catalog, "boots for hiking trails", k=2, user=user)
        assert found.data[0].id == "boot"
        cheap = client.search(catalog, "boots", filters={"price": {"lte": 50}})
        assert {h.id for h in cheap.data} == {"sock"}
        listed = client.list_catalogs()
        assert [c.items for c in listed.data if c.name == catalog] == [3]
        events = [{"user": user, "item": "boot", "type": "purchase"},
                  {"user": user, "item": "sock", "type": "view"}]  # fmt: skip
        sent = client.send_events(events, catalog=catalog)  # type: ignore[arg-type]
        assert (sent.accepted, sent.rejected) == (2, 0)
        features = client.get_features("user", user)
        assert features.views["user_activity"]["purchases"] == 1
        # A batch resent by another call with the same idempotency key is stored once.
        key = f"batch-{uuid.uuid4().hex[:8]}"
        again: Any = [{"user": user, "item": "boot", "type": "purchase"}]
        first = client.send_events(again, catalog=catalog, idempotency_key=key)
        assert client.send_events(again, catalog=catalog, idempotency_key=key) == first
        assert client.get_features("user", user).views["user_activity"]["purchases"] == 2
        models = client.list_models()
        assert "minilm" in [m.id for m in models.data]
        detail = client.get_model("minilm")
        assert {v["name"] for v in detail.versions} >= {"v1", "v2"}
        assert client.delete_item(catalog, "cap").deleted is True
        usage = client.get_usage()
        assert usage.requests > 0
        for answer in (vectors, packed, configured, upserted, item, found, cheap, listed, sent,
                       features, models, usage):  # fmt: skip
            _exact(answer)
        with pytest.raises(NotFoundError) as gone:
            client.get_item(catalog, "cap")
        assert (gone.value.status, gone.value.code) == (404, "not_found")
        assert len(gone.value.request_id) == 32


def test_the_async_client_covers_the_same_routes(url: str, tenant_key: str) -> None:
    catalog = f"sdk-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        async with AsyncClient(tenant_key, url) as client:
            await client.upsert_items(catalog, ITEMS[:2])
            both = await asyncio.gather(
                client.search(catalog, "wool sock"),
                client.embed(["a", "b", "c"], model="minilm-inline"),
                client.get_item(catalog, "sock"),
                client.list_catalogs(),
                client.get_features("item", "sock"),
                client.list_models(),
                client.get_model("minilm"),
                client.get_usage(),
            )
            found, vectors, item, *_ = both
            assert found.data[0].id == "sock"
            assert len(vectors.data) == 3
            assert vectors.version in ("v1", "v2")
            assert item.text["title"] == "Merino wool hiking sock"
            for answer in both:
                _exact(answer)
            await client.configure_catalog(catalog, hybrid=False)
            assert (await client.delete_item(catalog, "boot")).id == "boot"
            result = await client.send_events([{"user": "u1", "item": "sock", "type": "click"}],
                                              catalog=catalog)  # fmt: skip
            assert result.accepted == 1

    asyncio.run(run())


def test_the_admin_api_end_to_end(url: str) -> None:
    tenant = f"sdk-{uuid.uuid4().hex[:8]}"
    with _operator(url) as op:
        made = op.admin.create_tenant("SDK admin", id=tenant, limits={"texts_per_s": 50})
        assert (made.id, made.limits.texts_per_s, made.disabled) == (tenant, 50, False)
        assert op.admin.get_tenant(tenant).name == "SDK admin"
        assert tenant in [t.id for t in op.admin.list_tenants()]
        key = op.admin.create_key(tenant, name="ci", scopes=["embed", "admin"])
        assert key.key.startswith("sk-")
        assert key.state == "active"
        with Client(key.key, url) as own:
            # A tenant admin sees its own tenant only, and its own usage.
            assert [t.id for t in own.admin.list_tenants()] == [tenant]
            assert own.embed("hello", model="minilm").data[0].index == 0
            with pytest.raises(NotFoundError):
                own.admin.get_tenant(TEST_TENANT)
            with pytest.raises(PermissionDeniedError):
                own.search("any", "thing")
        rotated = op.admin.rotate_key(tenant, key.id, overlap_s=0)
        assert rotated.key != key.key
        revoked = op.admin.revoke_key(tenant, rotated.id)
        assert revoked.state == "revoked"
        keys = {k.id: k for k in op.admin.list_keys(tenant)}
        assert set(keys) == {key.id, rotated.id}
        with Client(rotated.key, url, max_retries=0) as refused:
            with pytest.raises(AuthenticationError) as caught:
                refused.list_models()
            assert caught.value.code == "unauthorized"
        patched = op.admin.update_tenant(tenant, disabled=True, limits={"requests_per_s": 5})
        assert (patched.disabled, patched.limits.requests_per_s) == (True, 5)
        usage = op.admin.tenant_usage(tenant)
        assert usage.tenant_id == tenant
        assert usage.requests >= 1
        indexes = op.admin.search_indexes()
        assert indexes.spaces
        for answer in (made, key, rotated, revoked, patched, usage, indexes, *keys.values()):
            _exact(answer)


def test_recommendations_through_both_clients(url: str, tenant_key: str) -> None:
    catalog = f"sdk-{uuid.uuid4().hex[:8]}"
    user = f"u-{uuid.uuid4().hex[:8]}"
    # While the catalog's recommender index is built the route answers 503 with
    # Retry-After: the client waits it out.
    with Client(tenant_key, url, max_retries=8) as client:
        client.upsert_items(catalog, ITEMS)
        got = client.recommend(user, catalog=catalog, k=2)
        assert got.user == user
        assert len(got.data) == 2
        assert {h.id for h in got.data} <= {"boot", "sock", "cap"}
        _exact(got)
        client.send_events([{"user": user, "item": "boot", "type": "purchase"}], catalog=catalog)

    async def run() -> list[str]:
        async with AsyncClient(tenant_key, url, max_retries=8) as client:
            seen = await client.recommend(user, catalog=catalog, k=3, context={"item": "sock"})
            return [h.id for h in seen.data]

    assert "boot" not in asyncio.run(run())  # seen: left out


def test_the_dashboards_data(url: str) -> None:
    with _operator(url) as op:
        state = op.admin.dashboard_state()
        metrics = op.admin.dashboard_metrics()
    assert "Ingress" in [d.name for d in state.deployments]
    assert metrics.nodes >= 1
    for answer in (state, metrics):
        _exact(answer)


def test_errors_name_the_field_and_keep_the_request_id(url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    with Client(tenant_api_key(), url) as client:
        with pytest.raises(BadRequestError) as bad:
            client.search("products", "q", k=0)
        assert bad.value.code == "invalid_request"
        assert bad.value.message.startswith("k:")
        assert bad.value.field == "k"
        events: Any = [{"user": user, "item": "x", "type": "view"},
                       {"user": user, "item": "x", "type": "wishlist"}]  # fmt: skip
        with pytest.raises(InvalidEventsError) as partly:
            client.send_events(events)
        assert (partly.value.result.accepted, partly.value.result.rejected) == (1, 1)
        assert partly.value.result.errors[0].field == "events.1.type"
        assert partly.value.field == "events.1.type"
        assert "wishlist" not in str(partly.value)


class _Seen(httpx.HTTPTransport):
    """The real transport, noting each attempt's status and request id."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((response.status_code, request.headers["x-request-id"]))
        return response


def test_answers_say_their_request_id_version_and_rate_limit(url: str) -> None:
    """`.response` on each result: the request id the service logged the call under (the
    one sent), the version that served it and the caller's rate limit, from the
    service's own headers; through both clients, and on a list answer."""
    tenant = f"sdk-{uuid.uuid4().hex[:8]}"
    with _operator(url) as op:
        op.admin.create_tenant("SDK headers", id=tenant, limits={"requests_per_s": 50})
        key = op.admin.create_key(tenant, scopes=["embed"]).key
        listed = op.admin.list_tenants()
        assert tenant in [t.id for t in listed]
        assert listed.response is not None
        assert (listed.response.status, len(listed.response.request_id)) == (200, 32)
    seen = _Seen()
    with Client(key, url, transport=seen) as client:
        vectors = client.embed("x", model="minilm")
    info = vectors.response
    assert info is not None
    assert (info.status, info.request_id) == (200, seen.seen[-1][1])
    assert info.model_version == vectors.version
    assert info.model_version in ("v1", "v2")
    limit = info.rate_limit
    assert limit is not None, dict(info.headers)
    assert limit.policy
    assert limit.limit is not None
    assert limit.remaining is not None
    assert 0 <= limit.remaining <= limit.limit
    assert limit.window_s is not None
    assert limit.window_s >= 1

    async def run() -> None:
        async with AsyncClient(key, url) as client:
            first, second = await asyncio.gather(
                client.embed("a", model="minilm-inline"), client.embed("b", model="minilm-inline")
            )
        assert first.response is not None
        assert second.response is not None
        assert first.response.request_id != second.response.request_id
        assert first.response.model_version == first.version
        assert first.response.rate_limit is not None

    asyncio.run(run())


def _first_refusal(client: Client) -> RateLimitError:
    """Calls until the limit refuses one (after the bucket's burst)."""
    for _ in range(5):
        try:
            client.embed("x", model="minilm")
        except RateLimitError as e:
            return e
    pytest.fail("5 calls at once were all admitted at 0.5 requests/s")


def test_a_429_is_waited_out_and_a_long_one_raised(url: str) -> None:
    tenant = f"sdk-{uuid.uuid4().hex[:8]}"
    with _operator(url) as op:
        op.admin.create_tenant("SDK slow", id=tenant, limits={"requests_per_s": 0.5})
        key = op.admin.create_key(tenant, scopes=["embed"]).key
    with Client(key, url, max_retries=0) as once:
        refusal = _first_refusal(once)
    assert refusal.code == "rate_limited"
    assert refusal.retry_after_s is not None
    assert refusal.retry_after_s >= 1
    assert refusal.rate_limit is not None
    assert (refusal.rate_limit.policy, refusal.rate_limit.remaining) == ("requests", 0)
    seen = _Seen()
    with Client(key, url, transport=seen) as patient:
        for _ in range(3):
            assert patient.embed("x", model="minilm").data[0].index == 0
            if any(code == 429 for code, _ in seen.seen):
                break
    refused = [rid for code, rid in seen.seen if code == 429]
    assert refused, seen.seen
    # The refused attempt was repeated under the same request id and answered.
    assert (200, refused[0]) in seen.seen


def _readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README: no Python example in the Python SDK section"
    return str(blocks[0])


def test_the_readme_example_runs_from_a_fresh_install(url: str, tmp_path: Path) -> None:
    with _operator(url) as op:
        tenant = op.admin.create_tenant("SDK readme", id=f"sdk-{uuid.uuid4().hex[:8]}").id
        key = op.admin.create_key(tenant, scopes=["embed", "search", "catalog"]).key
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # A copy of the package's source, so the build writes nothing into the repository.
    source = tmp_path / "servekit-client"
    shutil.copytree(
        REPO_ROOT / "sdk" / "python",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"),
    )
    done = subprocess.run(
        [*pip, "install", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    example = tmp_path / "example.py"
    example.write_text(_readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(SERVEKIT_API_KEY=key, SERVEKIT_URL=url)
    ran = subprocess.run(
        [str(venv / "bin" / "python"), str(example)],
        cwd=tmp_path,  # not the repository: the import must come from the install
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = ran.stdout.splitlines()
    assert lines[0] == "2 384"
    assert lines[1] == "sku-1"
    # The search's request id and served version; this tenant has no rate limit.
    assert re.fullmatch(r"[0-9a-f]{32} v[12] None", lines[2]), lines
    assert re.fullmatch(r"404 not_found [0-9a-f]{32}", lines[3]), lines
