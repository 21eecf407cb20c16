"""A call to a dedicated version maps what comes back over gRPC (the replica's exception
itself, not a RayTaskError) to an error that carries its status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from deployments.errors import InferenceFailed, Overloaded, Timeout
from deployments.replicas.loading import InjectedFault
from deployments.replicas.remote import call_version


class _Response:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def __await__(self) -> Any:
        raise self._error
        yield  # pragma: no cover - makes this a generator

    def cancel(self) -> None:
        pass


class _Handle:
    """Answers every call by raising `error`, as a replica's gRPC answer would."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    def __getattr__(self, method: str) -> Any:
        error = self._error

        class _Method:
            def remote(self, *args: Any) -> _Response:
                return _Response(error)

        return _Method()


def _call(error: BaseException) -> Any:
    deadline = time.monotonic() + 5
    return asyncio.run(call_version(_Handle(error), "embed", ([], 5.0), deadline, "m/v1"))  # type: ignore[arg-type]


def test_the_replicas_own_verdict_keeps_its_status_and_names_the_version() -> None:
    with pytest.raises(Timeout, match=r"^m/v1: the deadline passed"):
        _call(Timeout("the deadline passed before the model ran"))
    with pytest.raises(Overloaded, match=r"^m/v1: "):
        _call(Overloaded("64 texts already wait for this version, retry later"))


def test_any_other_exception_from_the_replica_is_a_model_failure() -> None:
    with pytest.raises(InferenceFailed, match="m/v1: the model failed"):
        _call(InjectedFault("injected fault"))
