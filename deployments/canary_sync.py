"""Where the shared canary judge lives: a named, detached Ray actor per application.

Each ingress replica hands its new canary samples to the judge every
`SYNC_INTERVAL_S` and applies the verdicts it answers with (see
`deployments/routing/canary.py`). The actor outlives any one ingress replica, so a
replica restarted with the same config picks its verdicts up again at its first sync.
It is created only when some model has a rollout policy, and uses no CPU reservation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from deployments.observability.logs import get_logger
from deployments.routing.canary import CanaryJudge
from deployments.routing.router import VersionRouter

SYNC_INTERVAL_S = 0.5
SYNC_TIMEOUT_S = 5.0
NAMESPACE = "serve"
# Raised whenever `CanaryJudge.sync` changes its arguments: replicas of a new release
# then find a judge of their own instead of calling a detached one an earlier release
# left running on the cluster (which would refuse every call). The earlier judge's
# verdicts do not carry over: replicas of the new release watch every canary afresh.
JUDGE_PROTOCOL = 2


def judge_name(app: str) -> str:
    """The judge actor's name for one Serve application and judge protocol."""
    return f"servekit-canary-judge-{app}-v{JUDGE_PROTOCOL}"


def judge_actor(app: str) -> Any:
    """The application's judge, created on first use."""
    return (
        ray.remote(CanaryJudge)
        .options(
            name=judge_name(app),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
        )
        .remote()
    )


class CanarySync:
    """An ingress replica's side of the shared canary judgement."""

    def __init__(self, router: VersionRouter, app: str, replica: str) -> None:
        self._router = router
        self._app = app
        self._replica = replica
        self._actor: Any = None
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger("canary")

    def start(self) -> None:
        """Begin syncing from the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.sync_once()
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def sync_once(self) -> None:
        """Hand over the samples taken since the last sync and apply the answer."""
        policies, samples, known = self._router.canary_payload()
        if not policies:
            return
        try:
            if self._actor is None:
                self._actor = judge_actor(self._app)
            judged = await asyncio.wait_for(
                self._actor.sync.remote(self._replica, policies, samples, known), SYNC_TIMEOUT_S
            )
        except (RayError, TimeoutError) as e:
            self._actor = None  # look it up again next time
            self._log.warning(
                "canary judge unreachable; samples of this interval are not judged",
                extra={"fields": {"error": type(e).__name__}},
            )
            return
        self._router.apply_judgement(judged)


def replica_identity() -> tuple[str, str]:
    """(application, replica id) of this replica; placeholders outside Serve."""
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return "local", "local"
    return context.app_name, str(context.replica_id.unique_id)
