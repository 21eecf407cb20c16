"""`POST /v1/events` with a key: a batch is stored once per tenant and `Idempotency-Key`
(else `X-Request-ID`), a repeat is answered as the first was, and a commit whose
outcome is unknown is a 503 with a key, a 500 without one. Over HTTP (FastAPI's test
client, the service's error handlers), on a real event log and online store (SQLite
files in tmp_path); the replica is a stand-in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from configs.features import load_definitions
from deployments.pipelines.features import FeatureService
from stores.features import FeatureStoreUnavailable, Merge, Row, RowKey
from stores.features_sqlite import SqliteFeatureStore
from tests.unit.deployments.fakes import events_app
from tests.unit.stores.test_events_once_contract import FlakyCommits

LOG = logging.getLogger("test.events")
TENANT = "default"  # auth off: the one tenant
BATCH = {"events": [{"user": "u1", "item": "shoe", "type": "click"},
                    {"user": "u1", "item": "sock", "type": "view"}]}  # fmt: skip


class Switchable:
    """The embedded online store, which can be taken down."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteFeatureStore(path)
        self.down = False

    async def read(self, keys: Sequence[RowKey]) -> list[Row | None]:
        return await self.store.read(keys)

    async def merge(self, merges: Sequence[Merge]) -> None:
        if self.down:
            raise FeatureStoreUnavailable("down")
        await self.store.merge(merges)

    async def replace(self, rows: Sequence[tuple[RowKey, Row, float]]) -> None:
        await self.store.replace(rows)

    async def close(self) -> None:
        await self.store.close()


class Service:
    """The replica's feature service over a log whose commits can fail."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = FlakyCommits(f"sqlite:///{tmp_path / 'registry.db'}")
        self.log.migrate()
        self.store = Switchable(tmp_path / "features.db")
        self.features = FeatureService(load_definitions(), self.store, self.log, None, LOG)

    def items(self) -> list[str]:
        return [s.event.item for s in self.log.scan(TENANT, 0, 100)]

    def clicks(self) -> int:
        """The user's clicks as the online row has them."""
        got = asyncio.run(self.features.read(TENANT, "user", "u1"))
        clicks: int = got.views["user_activity"]["clicks"]
        return clicks


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.log.close()


@pytest.fixture
def client(service: Service, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    return TestClient(events_app(service.features, monkeypatch))


def post(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return client.post("/v1/events", json=body, headers=named)


def test_a_repeat_with_the_same_request_id_is_answered_as_the_first_was(
    client: TestClient, service: Service
) -> None:
    first = post(client, BATCH, X_Request_ID="call-1")
    assert first.status_code == 200, first.text
    assert first.json()["features_updated"] is True
    assert "idempotent-replayed" not in first.headers
    again = post(client, BATCH, X_Request_ID="call-1")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert service.items() == ["shoe", "sock"]
    assert service.clicks() == 1  # merged into the online row once


def test_the_idempotency_key_wins_over_the_request_id(client: TestClient, service: Service) -> None:
    post(client, BATCH, Idempotency_Key="batch-7", X_Request_ID="attempt-1")
    again = post(client, BATCH, Idempotency_Key="batch-7", X_Request_ID="attempt-2")
    assert again.headers["idempotent-replayed"] == "true"
    assert service.items() == ["shoe", "sock"]


def test_an_idempotency_key_sent_with_another_batch_is_a_400(
    client: TestClient, service: Service
) -> None:
    post(client, BATCH, Idempotency_Key="batch-7")
    other = {"events": [{"user": "u2", "item": "hat", "type": "view"}]}
    refused = post(client, other, Idempotency_Key="batch-7")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["message"].startswith("header.idempotency-key: sent with another batch")
    assert service.items() == ["shoe", "sock"]


def test_a_request_id_sent_with_another_batch_stores_that_batch(
    client: TestClient, service: Service
) -> None:
    """A request id is not a promise of one batch (a client may send one per job): the
    other batch is stored as if sent without a key."""
    post(client, BATCH, X_Request_ID="job-1")
    other = {"events": [{"user": "u2", "item": "hat", "type": "view"}]}
    assert post(client, other, X_Request_ID="job-1").status_code == 200
    assert service.items() == ["shoe", "sock", "hat"]


def test_without_a_key_every_batch_is_stored(client: TestClient, service: Service) -> None:
    post(client, BATCH)
    post(client, BATCH)
    assert service.items() == ["shoe", "sock"] * 2


def test_a_batch_with_bad_events_repeats_its_400(client: TestClient, service: Service) -> None:
    body = {"events": [*BATCH["events"], {"user": "u1", "item": "x", "type": "wishlist"}]}
    first = post(client, body, X_Request_ID="call-2")
    assert first.status_code == 400
    again = post(client, body, X_Request_ID="call-2")
    assert (again.status_code, again.json()) == (400, first.json())
    assert again.json()["error"]["message"].endswith("(2 of 3 accepted)")
    assert service.items() == ["shoe", "sock"]


def test_a_lost_acknowledgement_is_found_again_and_merged_once(
    client: TestClient, service: Service
) -> None:
    service.log.lose_ack = 1  # committed, then the connection broke
    first = post(client, BATCH, X_Request_ID="call-3")
    assert first.status_code == 200, first.text
    again = post(client, BATCH, X_Request_ID="call-3")
    assert again.json() == first.json()
    assert service.items() == ["shoe", "sock"]
    assert service.clicks() == 1


def test_a_failed_commit_is_a_503_with_a_key_and_the_retry_stores_it_once(
    client: TestClient, service: Service
) -> None:
    service.log.refuse = 1
    refused = post(client, BATCH, X_Request_ID="call-4")
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    message = refused.json()["error"]["message"]
    assert message.startswith(
        "events: the event log is unavailable; resend the batch with the same key"
    )
    retried = post(client, BATCH, X_Request_ID="call-4")
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers  # the first kept nothing
    assert service.items() == ["shoe", "sock"]


def test_a_failed_commit_without_a_key_is_a_500_no_client_retries(
    client: TestClient, service: Service
) -> None:
    service.log.lose_ack = 1
    failed = post(client, BATCH)
    assert failed.status_code == 500
    assert "retry-after" not in failed.headers
    error = failed.json()["error"]
    assert error["code"] == "events_outcome_unknown"
    assert "may or may not be kept" in error["message"]
    assert service.items() == ["shoe", "sock"]  # kept, here: nothing could tell


def test_a_repeat_merges_a_batch_the_first_call_could_not(
    client: TestClient, service: Service
) -> None:
    service.store.down = True
    first = post(client, BATCH, Idempotency_Key="batch-9")
    assert first.json()["features_updated"] is False
    assert service.clicks() == 0
    service.store.down = False
    again = post(client, BATCH, Idempotency_Key="batch-9")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {**first.json(), "features_updated": True}
    post(client, BATCH, Idempotency_Key="batch-9")  # merged already: not again
    assert service.clicks() == 1
    assert service.items() == ["shoe", "sock"]


@pytest.mark.parametrize("key", ["k" * 129, "tab\there", ""])
def test_a_bad_idempotency_key_is_a_400_that_keeps_nothing(
    client: TestClient, service: Service, key: str
) -> None:
    refused = post(client, BATCH, Idempotency_Key=key)
    assert refused.status_code == 400
    message = "header.idempotency-key: 1 to 128 printable characters"
    assert refused.json()["error"]["message"] == message
    assert service.items() == []
