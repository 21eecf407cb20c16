"""The catalog and search routes' bodies: what a PUT of items refuses, and why."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.dataplane import CallRecord
from deployments.errors import from_validation_error
from deployments.http.search_routes import UpsertBody, indexes_doc
from deployments.pipelines.search import SearchService
from deployments.tenancy.principal import Principal, operator_principal
from stores.catalog_sql import open_catalog_store
from stores.tenants import RateLimits
from tests.unit.deployments.test_search_service import LOG, _items, embed_items


def _upsert(attributes: dict[str, Any]) -> UpsertBody:
    ok = {"id": "a", "text": {"title": "a"}}
    return UpsertBody.model_validate(
        {"items": [ok, {"id": "b", "text": {"title": "b"}, "attributes": attributes}]}
    )


@pytest.mark.parametrize(
    "value", [10**400, 2**64, 2**53, -(2**53)], ids=["10^400", "2^64", "2^53", "-2^53"]
)
def test_an_integer_past_what_json_readers_hold_is_named(value: int) -> None:
    with pytest.raises(ValidationError) as caught:
        _upsert({"size": 42, "n": value})
    assert from_validation_error(caught.value).message == (
        "items.1.attributes.n: an integer from -9007199254740991 to 9007199254740991"
    )


def test_the_largest_safe_integers_pass() -> None:
    body = _upsert({"top": 2**53 - 1, "bottom": -(2**53 - 1)})
    assert body.items[1].attributes == {"top": 2**53 - 1, "bottom": -(2**53 - 1)}


def _admin(tenant: str) -> CallRecord:
    scopes = frozenset({"admin", "search"})
    key = Principal(tenant, "k", "sk-x", scopes, None, False, RateLimits(), tenant)
    return CallRecord(principal=key)


def test_a_tenant_admin_sees_its_own_pending_items_and_no_change_log_position(
    tmp_path: Path,
) -> None:
    async def run() -> dict[str, dict[str, Any]]:
        store = open_catalog_store(f"sqlite:///{tmp_path / 'catalog.db'}")
        service = SearchService(store, embed_items, 3600, LOG, backfill_delay_s=3600)
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items()[:2])
        store.upsert("globex", "shop", _items())  # another tenant's, not embedded yet
        await service.follow_once()
        docs = {
            "acme": indexes_doc(service, _admin("acme")),
            "globex": indexes_doc(service, _admin("globex")),
            "operator": indexes_doc(service, CallRecord(principal=operator_principal())),
            "no auth": indexes_doc(service, CallRecord()),
        }
        await service.close()
        return docs

    docs = asyncio.run(run())
    assert "seq" not in docs["acme"]
    assert docs["acme"]["pending"] == {"m/v1": 0}
    assert [c["tenant_id"] for c in docs["acme"]["catalogs"]] == ["acme"]
    assert "seq" not in docs["globex"]
    assert docs["globex"]["pending"] == {"m/v1": len(_items())}
    for everyone in ("operator", "no auth"):
        assert docs[everyone]["seq"] == 2 + len(_items())  # every change, both tenants
        assert docs[everyone]["pending"] == {"m/v1": len(_items())}
        assert len(docs[everyone]["catalogs"]) == 2
