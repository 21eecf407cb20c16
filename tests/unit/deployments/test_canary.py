"""One canary judgement for every ingress replica: two routers share an in-process judge,
their samples make one window, the verdict is decided once and reaches them all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from configs.schema import AppArgs, IngressLiveConfig
from deployments.errors import InferenceFailed
from deployments.routing.canary import CanaryJudge
from deployments.routing.router import VersionRouter
from tests.conftest import REPO_ROOT

MIN_REQUESTS = 20
PER_REPLICA = 12  # under MIN_REQUESTS alone, over it together


class FakeBackend:
    """A version that answers, or fails every call (a broken canary)."""

    placement = "inline"

    def __init__(self, label: str, fail: bool = False) -> None:
        self.label = label
        self.fail = fail

    async def embed(self, texts: list[str], deadline: float) -> tuple[npt.NDArray[Any], list[int]]:
        if self.fail:
            raise InferenceFailed(f"{self.label}: the model failed on this request")
        return np.ones((len(texts), 4), dtype=np.float32), [1] * len(texts)

    async def metadata(self) -> dict[str, Any]:
        return {}

    async def ready(self) -> bool:
        return True

    def spare(self) -> bool:
        return True


class RouterMetrics:
    def __init__(self) -> None:
        self.weights: dict[tuple[str, str], int] = {}
        self.rollbacks: list[tuple[str, str]] = []

    def weight(self, model: str, version: str, weight: int) -> None:
        self.weights[(model, version)] = weight

    def rollback(self, model: str, version: str) -> None:
        self.rollbacks.append((model, version))

    def shadow(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(scope="module")
def args() -> AppArgs:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["models"].pop("recommender")  # the embedding model's canary only
    return AppArgs.model_validate(args)


def _live(v1: int = 90, v2: int = 10) -> IngressLiveConfig:
    return IngressLiveConfig.model_validate(
        {
            "traffic": {"minilm": {"v1": v1, "v2": v2}},
            "rollout": {
                "minilm": {
                    "canary": "v2",
                    "max_error_rate": 0.05,
                    "window_s": 60,
                    "min_requests": MIN_REQUESTS,
                }
            },
        }
    )


def _replica(args: AppArgs, live: IngressLiveConfig) -> tuple[VersionRouter, RouterMetrics]:
    backends: dict[tuple[str, str], Any] = {
        ("minilm", "v1"): FakeBackend("minilm/v1"),
        ("minilm", "v2"): FakeBackend("minilm/v2", fail=True),
    }
    metrics = RouterMetrics()
    router = VersionRouter(args, backends, metrics)
    router.configure(live)
    return router, metrics


def _canary_calls(router: VersionRouter, n: int) -> None:
    async def calls() -> None:
        for _ in range(n):
            with pytest.raises(InferenceFailed):
                await router.embed("minilm", "v2", ["a red shoe"], time.monotonic() + 5)

    asyncio.run(calls())


def _sync(judge: CanaryJudge, replica: str, router: VersionRouter) -> dict[str, Any]:
    """What `CanarySync.sync_once` does, without the actor in between."""
    answer = judge.sync(replica, *router.canary_payload())
    router.apply_judgement(answer)
    return answer["minilm"]


def _rolled_back_on_two_replicas(
    args: AppArgs,
) -> tuple[CanaryJudge, VersionRouter, VersionRouter]:
    """A judge, and two replicas whose canary it rolled back from one's calls."""
    judge = CanaryJudge()
    a, _ = _replica(args, _live())
    b, _ = _replica(args, _live())
    _canary_calls(a, 2 * PER_REPLICA)
    assert _sync(judge, "a", a)["decided_now"]
    _sync(judge, "b", b)
    assert a.weights("minilm") == b.weights("minilm") == {"v1": 100}
    return judge, a, b


def _picks(router: VersionRouter) -> set[str]:
    return {router.choose("minilm", None, "traffic", None) for _ in range(500)}


def test_each_replica_alone_stays_under_min_requests(args: AppArgs) -> None:
    for name in ("a", "b"):
        router, _ = _replica(args, _live())
        _canary_calls(router, PER_REPLICA)
        answer = _sync(CanaryJudge(), name, router)  # a judge of its own
        assert answer["verdict"] is None
        assert answer["window"]["requests"] == PER_REPLICA
        assert router.weights("minilm") == {"v1": 90, "v2": 10}


def test_samples_of_two_replicas_make_one_verdict_that_reaches_both(args: AppArgs) -> None:
    judge = CanaryJudge()
    (a, a_metrics), (b, b_metrics) = _replica(args, _live()), _replica(args, _live())
    _canary_calls(a, PER_REPLICA)
    _canary_calls(b, PER_REPLICA)

    first = _sync(judge, "replica-a", a)
    assert (first["verdict"], first["decided_now"]) == (None, False)
    assert first["window"]["requests"] == PER_REPLICA

    second = _sync(judge, "replica-b", b)  # 24 failed calls in the one window: breach
    assert second["decided_now"] is True
    assert second["window"]["requests"] == 2 * PER_REPLICA
    verdict = second["verdict"]
    assert (verdict["version"], verdict["decided_from"]) == ("v2", "replica-b")
    assert verdict["reason"].startswith("error rate 100.0% over 24 calls")
    assert b.weights("minilm") == {"v1": 100}  # versions at 0 are not split to
    assert a.weights("minilm") == {"v1": 90, "v2": 10}  # until its next sync

    third = _sync(judge, "replica-a", a)
    assert (third["verdict"], third["decided_now"]) == (verdict, False)
    for router, metrics in ((a, a_metrics), (b, b_metrics)):
        assert router.weights("minilm") == {"v1": 100}
        assert metrics.weights[("minilm", "v2")] == 0
        assert metrics.weights[("minilm", "v1")] == 100
        assert _picks(router) == {"v1"}
        assert router.card("minilm", 0, detail=True)["rollout"]["state"] == "rolled_back"

    # Decided once: later syncs, with or without samples, decide nothing new.
    _canary_calls(a, 5)  # pinned calls after the rollback are not canary samples
    assert not any(_sync(judge, name, r)["decided_now"] for name, r in (("a", a), ("b", b)))
    assert [e["version"] for e in judge.verdicts()] == ["v2"]
    assert a_metrics.rollbacks == []
    assert b_metrics.rollbacks == [("minilm", "v2")]  # counted by the replica that decided


def test_a_restarted_replica_gets_the_verdict_at_its_first_sync(args: AppArgs) -> None:
    judge = CanaryJudge()
    a, _ = _replica(args, _live())
    _canary_calls(a, 2 * PER_REPLICA)
    assert _sync(judge, "a", a)["decided_now"]

    restarted, metrics = _replica(args, _live())
    assert restarted.weights("minilm") == {"v1": 90, "v2": 10}
    answer = _sync(judge, "restarted", restarted)  # no samples of its own
    assert (answer["decided_now"], answer["verdict"]["version"]) == (False, "v2")
    assert restarted.weights("minilm") == {"v1": 100}
    assert _picks(restarted) == {"v1"}
    assert metrics.rollbacks == []
    assert len(judge.verdicts()) == 1


def test_a_changed_config_does_not_apply_the_old_verdict(args: AppArgs) -> None:
    judge = CanaryJudge()
    a, _ = _replica(args, _live())
    _canary_calls(a, 2 * PER_REPLICA)
    assert _sync(judge, "a", a)["decided_now"]

    fixed, _ = _replica(args, _live(80, 20))  # a new config: a fixed canary, say
    answer = _sync(judge, "fixed", fixed)
    assert (answer["verdict"], answer["window"]["requests"]) == (None, 0)
    assert fixed.weights("minilm") == {"v1": 80, "v2": 20}

    a.configure(_live(80, 20))  # the replica that rolled back takes the new config too
    assert a.weights("minilm") == {"v1": 80, "v2": 20}
    assert _sync(judge, "a", a)["verdict"] is None
    assert a.weights("minilm") == {"v1": 80, "v2": 20}
    assert _picks(a) == {"v1", "v2"}
    assert len(judge.verdicts()) == 1


def test_an_operator_clear_gives_the_canary_back_and_watches_afresh(args: AppArgs) -> None:
    judge, a, b = _rolled_back_on_two_replicas(args)

    # Re-applying the same config keeps the verdict (it is state, not a side effect).
    a.configure(_live())
    assert _sync(judge, "a", a)["verdict"] is not None
    assert a.weights("minilm") == {"v1": 100}

    assert judge.clear("minilm") == 1
    assert judge.clear("other") == 0
    for name, router in (("a", a), ("b", b)):
        answer = _sync(judge, name, router)
        assert (answer["verdict"], answer["window"]["requests"]) == (None, 0)
        assert router.weights("minilm") == {"v1": 90, "v2": 10}
        assert router.card("minilm", 0, detail=True)["rollout"]["state"] == "watching"
    # Watched afresh: a new breach decides a new verdict.
    _canary_calls(b, 2 * PER_REPLICA)
    assert _sync(judge, "b", b)["decided_now"]
    assert len(judge.verdicts()) == 2


def test_a_restarted_judge_takes_the_verdict_back_from_the_replicas(args: AppArgs) -> None:
    """The judge keeps verdicts in memory; a restart is not an operator's clear."""
    _, a, b = _rolled_back_on_two_replicas(args)

    restarted = CanaryJudge()  # the actor came back empty
    for name, router in (("a", a), ("b", b)):
        answer = _sync(restarted, name, router)
        assert answer["verdict"] is not None
        assert router.weights("minilm") == {"v1": 100}
    fresh, _ = _replica(args, _live())  # a replica that never saw the verdict
    assert _sync(restarted, "fresh", fresh)["verdict"]["version"] == "v2"
    assert fresh.weights("minilm") == {"v1": 100}
    # An operator's clear on the restarted judge still clears: not handed back again.
    assert restarted.clear("minilm") == 1
    for name, router in (("a", a), ("b", b), ("fresh", fresh)):
        assert _sync(restarted, name, router)["verdict"] is None
        assert router.weights("minilm") == {"v1": 90, "v2": 10}


def test_a_config_left_and_applied_again_later_is_watched_afresh(args: AppArgs) -> None:
    """promote -> rolled back -> rollback -> days later the same promote: a fresh watch,
    not the old verdict."""
    from deployments.routing.canary import FORGET_AFTER_S

    now = [1000.0]
    judge = CanaryJudge(clock=lambda: now[0])
    a, _ = _replica(args, _live())
    _canary_calls(a, 2 * PER_REPLICA)
    assert _sync(judge, "a", a)["decided_now"]
    assert a.weights("minilm") == {"v1": 100}

    a.configure(_live(100, 0))  # `servekit rollback`: another config
    _sync(judge, "a", a)
    now[0] += FORGET_AFTER_S / 2
    a.configure(_live())  # the same promote again, soon: the verdict still stands
    assert _sync(judge, "a", a)["verdict"] is not None
    assert a.weights("minilm") == {"v1": 100}

    a.configure(_live(100, 0))
    _sync(judge, "a", a)
    now[0] += FORGET_AFTER_S + 1  # no replica ran the promoted config for that long
    a.configure(_live())
    answer = _sync(judge, "a", a)
    assert (answer["verdict"], answer["window"]["requests"]) == (None, 0)
    assert a.weights("minilm") == {"v1": 90, "v2": 10}
