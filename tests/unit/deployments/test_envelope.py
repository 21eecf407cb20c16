"""The envelope's record of each answered request (no Ray)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from starlette.responses import Response

from deployments.dataplane import CallRecord
from deployments.http.envelope import Envelope
from deployments.tenancy.principal import operator_principal
from tests.unit.deployments.fakes import RequestRecorder


def _answer(principal_tenant: str | None, operator: bool) -> RequestRecorder:
    metrics = RequestRecorder()
    envelope = Envelope(metrics, logging.getLogger("test"))
    principal = None
    if principal_tenant is not None:
        principal = replace(operator_principal(), tenant_id=principal_tenant, is_operator=operator)

    async def work(call: CallRecord) -> Response:
        return Response("ok")

    asyncio.run(envelope.run("rid", "/v1/models", False, work, principal))
    return metrics


def test_a_tenants_request_is_in_its_tenant_series() -> None:
    assert _answer("acme", operator=False).tenants == [("acme", 200)]


def test_the_operators_requests_are_in_no_tenant_series() -> None:
    """The dashboard's polling and the CLI are not requests of a tenant's key (the
    pooled series `other` counts those)."""
    metrics = _answer("operator", operator=True)
    assert metrics.tenants == []
    assert [code for *_, code in metrics.requests] == [200]
