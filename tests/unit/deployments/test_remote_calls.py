"""A call to a dedicated version maps what comes back over gRPC (the replica's exception
itself, not a RayTaskError) to an error that carries its status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from deployments.errors import InferenceFailed, Overloaded, Timeout
from deployments.replicas.loading import InjectedFault
from deployments.replicas.remote import DedicatedBackend, call_version


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


class _DiesOnce:
    """Records each attempt's arguments; the first attempt's replica dies after
    `dies_after_s`, the second answers."""

    def __init__(self, dies_after_s: float) -> None:
        self.dies_after_s = dies_after_s
        self.calls: list[tuple[Any, ...]] = []

    def options(self, **_: Any) -> _DiesOnce:
        return self

    def __getattr__(self, method: str) -> Any:
        calls, dies_after_s = self.calls, self.dies_after_s

        class _Method:
            def remote(self, *args: Any) -> Any:
                calls.append(args)
                return _Answer(dies=len(calls) == 1, after_s=dies_after_s)

        return _Method()


class _Answer:
    def __init__(self, dies: bool, after_s: float) -> None:
        self.dies, self.after_s = dies, after_s

    def __await__(self) -> Any:
        return self._answer().__await__()

    async def _answer(self) -> str:
        if self.dies:
            await asyncio.sleep(self.after_s)
            raise ActorDiedError()
        return "answer"

    def cancel(self) -> None:
        pass


def test_a_retry_on_another_replica_sends_the_seconds_left_then() -> None:
    """A replica that dies after 0.2 s of a 5 s budget: the retry tells the next replica
    it has about 4.8 s, not the 5 s the first was told (it would keep the request
    queued past the caller's deadline)."""
    handle = _DiesOnce(dies_after_s=0.2)
    backend = DedicatedBackend("m/v1", handle, timeout_s=5)  # type: ignore[arg-type]

    async def call() -> Any:
        return await backend.embed(["text"], time.monotonic() + 5)

    assert asyncio.run(call()) == "answer"
    (texts, first, caller), (texts_again, second, caller_again) = handle.calls
    assert (texts_again, caller_again) == (texts, caller)
    assert texts == ["text"]
    assert 4.9 < first <= 5.0
    assert first - 0.5 < second <= first - 0.19
