"""The Python SDK's event batches against the service's own `POST /v1/events` (FastAPI's
test client as the transport, a real event log and online store in tmp_path): a batch
whose answer was lost is resent and stored once, and a batch resent by a later call
with the same `idempotency_key` is stored once too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from servekit_client import BadRequestError, Client, RetryPolicy
from tests.unit.deployments.fakes import events_app
from tests.unit.deployments.test_events_once import Service

NO_WAIT = RetryPolicy(initial_delay_s=0.0, max_delay_s=0.0)
CLICK = [{"user": "u1", "item": "shoe", "type": "click"}]


class LosesAnswers(httpx.BaseTransport):
    """Hands every request to the app; the first `lose` answers are lost on the way
    back (the service acted, the caller sees a timeout)."""

    def __init__(self, inner: httpx.BaseTransport, lose: int) -> None:
        self.inner = inner
        self.lose = lose
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        answer = self.inner.handle_request(request)
        content = answer.read()
        if self.lose:
            self.lose -= 1
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=content)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    made = Service(tmp_path)
    yield made
    made.log.close()


def _client(
    service: Service, monkeypatch: pytest.MonkeyPatch, lose: int
) -> tuple[Client, LosesAnswers]:
    app = TestClient(events_app(service.features, monkeypatch))
    transport = LosesAnswers(app._transport, lose)
    return Client(False, "http://testserver", transport=transport, retry=NO_WAIT), transport


def test_a_batch_whose_answer_was_lost_is_resent_and_stored_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, transport = _client(service, monkeypatch, lose=2)
    done = client.send_events(CLICK)  # type: ignore[arg-type]
    assert (done.accepted, done.rejected) == (1, 0)
    assert len(transport.sent) == 3
    assert service.items() == ["shoe"]
    assert service.clicks() == 1


def test_a_batch_resent_by_another_call_with_its_key_is_stored_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = _client(service, monkeypatch, lose=0)
    first = client.send_events(CLICK, idempotency_key="order-7")  # type: ignore[arg-type]
    again = client.send_events(CLICK, idempotency_key="order-7")  # type: ignore[arg-type]
    assert again == first
    assert service.items() == ["shoe"]
    other = [{"user": "u1", "item": "sock", "type": "view"}]
    with pytest.raises(BadRequestError) as caught:
        client.send_events(other, idempotency_key="order-7")  # type: ignore[arg-type]
    assert caught.value.code == "idempotency_key_reused"
    # Without a key, each call is a batch of its own.
    client.send_events(CLICK)  # type: ignore[arg-type]
    assert service.items() == ["shoe", "shoe"]
