"""Calling a version's deployment: bounded in time, retried once on replica death,
every failure mapped to an error that carries its status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.errors import InferenceFailed, Overloaded, Timeout, Unavailable
from deployments.logs import get_logger

_log = get_logger("calls")
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)


async def call_version(
    handle: DeploymentHandle[Any], method: str, args: tuple[Any, ...], timeout_s: float, label: str
) -> Any:
    """Call `method(*args)` on a version's replicas within `timeout_s`.

    Inference is idempotent, so a call whose replica died is retried once on
    another replica, within the same deadline.
    """
    deadline = time.monotonic() + timeout_s
    for attempt in (1, 2):
        response = getattr(handle, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), deadline - time.monotonic())
        except TimeoutError as e:
            response.cancel()
            raise Timeout(f"{label}: no answer within {timeout_s:g} s") from e
        except BackPressureError as e:
            raise Overloaded(f"{label}: overloaded, retry later") from e
        except _REPLICA_GONE as e:
            if attempt == 2 or time.monotonic() >= deadline:
                raise Unavailable(f"{label}: no replica available, retry later") from e
            _log.warning("replica lost, retrying once", extra={"fields": {"target": label}})
        except RayTaskError as e:
            _log.error("model call failed", exc_info=e, extra={"fields": {"target": label}})
            raise InferenceFailed(f"{label}: the model failed on this request") from e
    raise AssertionError("unreachable")


async def _await(response: Any) -> Any:
    return await response
