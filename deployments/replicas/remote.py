"""A dedicated version as a `VersionBackend`: its deployment, called through a handle.

Calls go over the replicas' gRPC servers (`_by_reference=False`, arguments and answers
pickled) rather than as Ray actor calls: no object store, no core-worker task per
call. In the same service a call took half the time and half the CPU on each side
(`bench/hop.py`, see the README's Performance section).

The handle's router runs on the calling replica's own event loop (`on_calling_loop`),
not on the loop Serve otherwise starts for it in a thread of its own: a call then
needs no hand-over to that thread and back. At one connection through a dedicated
version, 150-160 -> 163-168 requests/s (README, "The dedicated placement's hop").

Every call is bounded by the caller's deadline, which travels with it (as the
seconds left), so the replica drops work whose caller has already given up. A call
whose replica died is retried once on another replica within the same deadline
(inference is idempotent), told the seconds left by then. Every failure becomes an
error that carries its status: no Ray exception reaches the caller unmapped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    RayError,
    RayTaskError,
    TaskCancelledError,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle

from configs.schema import AppArgs
from deployments.errors import (
    InferenceFailed,
    Overloaded,
    ServekitError,
    Timeout,
    Unavailable,
)
from deployments.observability.logs import get_logger
from deployments.replicas.backend import SHADOW_COPY, EmbedResult, VersionBackend, remaining_s
from deployments.replicas.direct import (
    DirectPool,
    DirectUnavailable,
    RemoteFailure,
    deployment_prefix,
)
from deployments.replicas.traffic import caller_if_sequential

_log = get_logger("calls")
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)
METADATA_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 2.0


def on_calling_loop(handle: Any) -> Any:
    """`handle` with its router on the event loop that calls it. Serve's default runs a
    replica's routers on one loop in a thread of their own, so each call is handed to
    that thread and its answer handed back. Call this on that event loop, before the
    handle's first `.options()` or `.remote()` (which set it up with the defaults); a
    handle already set up, or a stand-in for one, is returned as it is."""
    if isinstance(handle, DeploymentHandle) and not handle.is_initialized:
        handle._init(_run_router_in_separate_loop=False)
    return handle


async def call_version(
    handle: DeploymentHandle[Any],
    method: str,
    args: tuple[Any, ...],
    deadline: float,
    label: str,
    timeout_s: float | None = None,
    seconds_left_at: int | None = None,
) -> Any:
    """Call `method(*args)` on a version's replicas by `deadline` (`time.monotonic()`);
    `timeout_s`: the whole budget, named in the 504's message. `seconds_left_at`: the
    position in `args` of the seconds the caller has left, which a retry sends anew
    (what is left then, not what was left at the first attempt)."""
    budget = timeout_s if timeout_s is not None else remaining_s(deadline)
    for attempt in (1, 2):
        if attempt == 2 and seconds_left_at is not None:
            i = seconds_left_at
            args = (*args[:i], remaining_s(deadline), *args[i + 1 :])
        response = getattr(handle, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), remaining_s(deadline))
        except TimeoutError as e:
            response.cancel()
            raise Timeout(f"{label}: no answer within {budget:g} s") from e
        except _REPLICA_GONE as e:
            if attempt == 2 or time.monotonic() >= deadline:
                raise Unavailable(f"{label}: no replica available, retry later") from e
            _log.warning("replica lost, retrying once", extra={"fields": {"target": label}})
        except RayTaskError as e:  # an actor call: what the replica raised, wrapped
            cause = getattr(e, "cause", None)
            raise _from_replica(cause if isinstance(cause, ServekitError) else e, label) from e
        except BackPressureError as e:
            raise Overloaded(f"{label}: overloaded, retry later") from e
        except (RequestCancelledError, TaskCancelledError) as e:
            raise Unavailable(f"{label}: the call was cancelled, retry later") from e
        except (RayServeException, RayError, grpc.aio.AioRpcError) as e:  # anything else
            if not SHADOW_COPY.get():
                _log.error(
                    "model call failed in Ray", exc_info=e, extra={"fields": {"target": label}}
                )
            raise Unavailable(f"{label}: the version cannot be reached, retry later") from e
        except Exception as e:  # over gRPC, what the replica raised arrives as itself
            raise _from_replica(e, label) from e
    raise AssertionError("unreachable")


def _from_replica(raised: Exception, label: str) -> ServekitError:
    """What a version's replica raised, as the caller's error: the replica's own verdict
    (e.g. expired) under the version's label; any other failure a logged 500."""
    if isinstance(raised, ServekitError):
        return type(raised)(f"{label}: {raised.message}")
    if not SHADOW_COPY.get():
        _log.error("model call failed", exc_info=raised, extra={"fields": {"target": label}})
    return InferenceFailed(f"{label}: the model failed on this request")


async def _await(response: Any) -> Any:
    return await response


class DedicatedBackend:
    """One version running as its own deployment (`<model>-<version>`)."""

    placement = "dedicated"

    def __init__(
        self,
        label: str,
        handle: DeploymentHandle[Any],
        timeout_s: float,
        direct: DirectPool | None = None,
    ) -> None:
        self.label = label
        self._handle = handle
        self.direct = direct
        self._calls: DeploymentHandle[Any] | None = None
        self.timeout_s = timeout_s  # request_timeout_s, for the 504's message
        self._meta: dict[str, Any] | None = None

    @property
    def handle(self) -> DeploymentHandle[Any]:
        """The handle the calls go through, set up on first use, which is on the
        replica's event loop (its router runs there, see `on_calling_loop`)."""
        if self._calls is None:
            self._calls = on_calling_loop(self._handle).options(
                _by_reference=False,
                request_serialization="pickle",
                response_serialization="pickle",
            )
        return self._calls

    async def embed(self, texts: list[str], deadline: float) -> EmbedResult:
        """Vectors for `texts` from the version's replicas, by `deadline` (sent as the
        seconds left, at each attempt); the call names this replica while it serves one
        request at a time (the version's replica may then run it on its event loop, see
        `traffic`). Directly when a replica takes direct calls (`direct`), else, or
        when that call is lost, through the handle."""
        if self.direct is not None:
            try:
                return await self._embed_direct(texts, deadline)
            except DirectUnavailable:
                pass
        result: EmbedResult = await call_version(
            self.handle,
            "embed",
            (texts, remaining_s(deadline), caller_if_sequential()),
            deadline,
            self.label,
            self.timeout_s,
            seconds_left_at=1,
        )
        return result

    async def _embed_direct(self, texts: list[str], deadline: float) -> EmbedResult:
        assert self.direct is not None
        args = (texts, remaining_s(deadline), caller_if_sequential())
        try:
            result: EmbedResult = await self.direct.call("embed", args, remaining_s(deadline))
            return result
        except TimeoutError as e:
            raise Timeout(f"{self.label}: no answer within {self.timeout_s:g} s") from e
        except (ServekitError, RemoteFailure) as e:  # what the replica raised
            raise _from_replica(e, self.label) from e

    async def close(self) -> None:
        """Close the direct connections (the replica's shutdown)."""
        if self.direct is not None:
            await self.direct.close()

    async def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts, asked once and kept (a version is immutable)."""
        if self._meta is None:
            deadline = time.monotonic() + METADATA_TIMEOUT_S
            self._meta = await call_version(self.handle, "metadata", (), deadline, self.label)
        return self._meta

    def spare(self) -> bool:
        """Its replicas' load is not seen from here: the shadower's cap on copies in
        flight per version is what bounds them."""
        return True

    async def ready(self) -> bool:
        """Whether a replica answers that its runtime is loaded and not wedged."""
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            ok = bool(await call_version(self.handle, "ready", (), deadline, self.label))
            if ok:
                await self.metadata()
            return ok
        except ServekitError:
            return False


def version_backends(
    args: AppArgs, servers: dict[str, Any], inline: Mapping[tuple[str, str], VersionBackend]
) -> dict[tuple[str, str], VersionBackend]:
    """Every version's backend: the inline ones, the recommender's (loaded here), and
    one per dedicated version over its deployment's handle (`servers`, by name)."""
    from deployments.replicas.recommender_backend import load_recommenders

    backends: dict[tuple[str, str], VersionBackend] = {**inline, **load_recommenders(args)}
    for name, (model, version) in args.deployment_names().items():
        backends[(model, version)] = DedicatedBackend(
            f"{model}/{version}", servers[name], args.request_timeout_s, direct_pool(args, name)
        )
    return backends


def direct_pool(args: AppArgs, deployment: str) -> DirectPool | None:
    """The direct way to a deployment's replicas (a dedicated version's or a catalog
    shard's) when `dedicated_calls` is `direct` and this runs in a Serve replica; else
    None: Serve's handle alone."""
    app = replica_app() if args.dedicated_calls == "direct" else None
    return DirectPool(deployment_prefix(app, deployment)) if app is not None else None


def closeable(backends: Mapping[tuple[str, str], VersionBackend]) -> list[DedicatedBackend]:
    """The backends that hold connections to let go of at the replica's shutdown."""
    return [b for b in backends.values() if isinstance(b, DedicatedBackend)]


def replica_app() -> str | None:
    """The application of the Serve replica this runs in (None outside one)."""
    from ray import serve

    try:
        return str(serve.get_replica_context().app_name)
    except RayServeException:
        return None
