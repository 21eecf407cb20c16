"""The data plane in front of the embedding cache: only misses reach a version, in order
and with each text's token count; tenants and versions never share; admission still
counts every text; a retired version is dropped; shadow copies see the whole request.
The router is real, over versions that record what they embed."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from configs.schema import AppArgs, IngressLiveConfig
from deployments.dataplane import EMBEDDINGS, NO_TENANT, SEARCH, CallRecord, DataPlane
from deployments.errors import BadRequest
from deployments.pipelines.wiring import item_embedder
from deployments.replicas.recommender_backend import RecommenderBackend
from deployments.routing.router import VersionRouter
from deployments.tenancy.admission import Admission
from deployments.tenancy.principal import Principal
from stores.embed_cache import EmbedCache, MemoryStore, cache_keys
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.tenants import RateLimits
from tests.conftest import REPO_ROOT
from tests.unit.deployments.fakes import QuietRouterMetrics

LOG = logging.getLogger("test.dataplane")


class RecordingVersion:
    """A version whose vector of a text is `[version, characters, words, 1]` of its
    normalized form, and whose token count is its word count; it keeps every call."""

    placement = "inline"

    def __init__(self, label: str, number: int) -> None:
        self.label = label
        self.number = number
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str], deadline: float) -> tuple[npt.NDArray[Any], list[int]]:
        self.calls.append(list(texts))
        words = [" ".join(t.split()) for t in texts]
        rows = [[self.number, len(w), len(w.split()), 1] for w in words]
        return np.array(rows, dtype=np.float32), [len(w.split()) for w in words]

    async def metadata(self) -> dict[str, Any]:
        return {"embedding_dim": 4}

    async def ready(self) -> bool:
        return True

    def spare(self) -> bool:
        return True


def _args(auth: bool = True, recommender: bool = False) -> AppArgs:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["auth"] = {"enabled": auth}
    if not recommender:
        args["models"].pop("recommender")  # the embedding model's cache only
    return AppArgs.model_validate(args)


def _live(v1: int = 100, v2: int = 0, **extra: Any) -> IngressLiveConfig:
    return IngressLiveConfig.model_validate({"traffic": {"minilm": {"v1": v1, "v2": v2}}, **extra})


def _plane(args: AppArgs | None = None) -> tuple[DataPlane, dict[str, RecordingVersion]]:
    args = args or _args()
    versions = {v: RecordingVersion(f"minilm/{v}", n) for n, v in enumerate(("v1", "v2"), 1)}
    backends: dict[tuple[str, str], Any] = {("minilm", v): b for v, b in versions.items()}
    if "recommender" in args.models:
        no_model: Any = None  # its work is the recommend pipeline's, not the data plane's
        backends[("recommender", "v1")] = RecommenderBackend("recommender/v1", no_model, {})
    router = VersionRouter(args, backends, QuietRouterMetrics())
    access = SimpleNamespace(admission=Admission(EmbeddedLimiter(), True, LOG))
    cache = EmbedCache(MemoryStore(1 << 20))
    return DataPlane(args, router, access, cache), versions  # type: ignore[arg-type]


def _call(tenant: str, limits: RateLimits | None = None) -> CallRecord:
    principal = Principal(
        tenant_id=tenant,
        key_id=f"key_{tenant}",
        prefix="sk-test",
        scopes=frozenset({"embed", "search"}),
        models=None,
        may_pin=True,
        limits=limits or RateLimits(),
        subject=tenant,
    )
    return CallRecord(principal=principal)


def _search(
    plane: DataPlane, tenant: str, texts: list[str], version: str = "v1"
) -> npt.NDArray[np.float32]:
    return asyncio.run(plane.embed_version(_call(tenant), "minilm", version, texts, "query"))


def test_only_the_misses_are_embedded_each_once_in_order() -> None:
    plane, versions = _plane()
    asyncio.run(plane.configure(_live()))
    first = _search(plane, "acme", ["red shoe", "blue sock"])
    texts = ["blue  sock\n", "green hat", "red shoe", "green hat"]

    async def again() -> tuple[npt.NDArray[np.float32], list[int]]:
        deadline = time.monotonic() + 5
        return await plane.embed_cached(SEARCH, "acme", "minilm", "v1", texts, deadline)

    vectors, tokens = asyncio.run(again())
    assert versions["v1"].calls == [["red shoe", "blue sock"], ["green hat"]]
    np.testing.assert_array_equal(vectors[0], first[1])
    np.testing.assert_array_equal(vectors[2], first[0])
    assert vectors[:, 1].tolist() == [9, 9, 8, 9]  # each text's own row, in order
    assert tokens == [2, 2, 2, 2]


def test_two_tenants_never_share() -> None:
    plane, versions = _plane()
    asyncio.run(plane.configure(_live()))
    _search(plane, "acme", ["red shoe"])
    _search(plane, "globex", ["red shoe"])
    _search(plane, "acme", ["red shoe"])
    assert versions["v1"].calls == [["red shoe"], ["red shoe"]]


def test_two_versions_never_share() -> None:
    plane, versions = _plane()
    asyncio.run(plane.configure(_live(90, 10)))
    one = _search(plane, "acme", ["red shoe"], "v1")
    two = _search(plane, "acme", ["red shoe"], "v2")
    assert versions["v2"].calls == [["red shoe"]]
    assert (one[0][0], two[0][0]) == (1, 2)  # each version's own vector
    assert _search(plane, "acme", ["red shoe"], "v2")[0][0] == 2
    assert versions["v2"].calls == [["red shoe"]]  # then from the cache


def test_embeddings_are_cached_only_once_switched_on() -> None:
    plane, versions = _plane()

    def embeddings(texts: list[str]) -> int:
        call = _call("acme")
        out = asyncio.run(plane.embed(call, "minilm", texts, "v1", "version", None, "input"))
        return out.tokens

    asyncio.run(plane.configure(_live()))  # the default: search only
    embeddings(["red shoe"])
    embeddings(["red shoe"])
    assert versions["v1"].calls == [["red shoe"], ["red shoe"]]
    asyncio.run(plane.configure(_live(cache={"embeddings": True})))
    embeddings(["red shoe"])
    assert embeddings(["red shoe", "a blue wool sock"]) == 2 + 4  # usage counts every text
    assert versions["v1"].calls[2:] == [["red shoe"], ["a blue wool sock"]]
    asyncio.run(plane.configure(_live(cache={"enabled": False, "embeddings": True})))
    embeddings(["red shoe"])
    assert versions["v1"].calls[-1] == ["red shoe"]


def test_admission_counts_every_text_cached_or_not() -> None:
    plane, versions = _plane()
    asyncio.run(plane.configure(_live()))
    limits = RateLimits(monthly_texts=100)

    async def three() -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(3):
            call = _call("acme", limits)
            await plane.embed_version(call, "minilm", "v1", ["a", "b", "c", "d"], "query")
            headers = call.headers
        return headers

    headers = asyncio.run(three())
    assert versions["v1"].calls == [["a", "b", "c", "d"]]
    assert headers["RateLimit"].startswith('"monthly";r=88;')


def test_a_recommender_is_refused_before_admission() -> None:
    """Embedding with a model that embeds no texts is a 400 that takes nothing from the
    caller's limits, on `/v1/embeddings` and on the inference protocol's routes."""
    plane, versions = _plane(_args(recommender=True))
    live = {"traffic": {"minilm": {"v1": 100}, "recommender": {"v1": 100}}}
    asyncio.run(plane.configure(IngressLiveConfig.model_validate(live)))
    limits = RateLimits(monthly_texts=3)
    message = "model: recommender is a recommender; call /v1/recommendations"
    for pinned in (None, "v1"):
        with pytest.raises(BadRequest) as info:
            plane.check_target("recommender", pinned, "version", _call("acme", limits))
        assert info.value.message == message
        call = _call("acme", limits)
        embed = plane.embed(call, "recommender", ["a", "b"], pinned, "version", None, "input")
        with pytest.raises(BadRequest) as info:
            asyncio.run(embed)
        assert info.value.message == message
    call = _call("acme", limits)
    out = asyncio.run(plane.embed(call, "minilm", ["a", "b"], None, "version", None, "input"))
    assert out.vectors.shape == (2, 4)
    assert call.headers["RateLimit"].startswith('"monthly";r=1;')
    assert versions["v1"].calls == [["a", "b"]]


def test_a_retired_version_is_dropped_and_no_longer_cached() -> None:
    plane, versions = _plane()
    asyncio.run(plane.configure(_live(100, 0)))
    _search(plane, "acme", ["red shoe"], "v1")
    assert len(plane.cache.memory) == 1
    asyncio.run(plane.configure(_live(0, 100)))  # v1 retired
    assert len(plane.cache.memory) == 0
    _search(plane, "acme", ["red shoe"], "v1")  # still callable pinned, not cached
    _search(plane, "acme", ["red shoe"], "v1")
    assert versions["v1"].calls == [["red shoe"]] * 3
    assert len(plane.cache.memory) == 0
    asyncio.run(plane.configure(_live(100, 0, shadow={"minilm": {"version": "v2", "fraction": 1}})))
    _search(plane, "acme", ["red shoe"], "v2")  # a shadow version is live
    _search(plane, "acme", ["red shoe"], "v2")
    assert versions["v2"].calls == [["red shoe"]]


def test_a_shadow_copy_gets_the_whole_request() -> None:
    plane, versions = _plane()
    shadow = {"minilm": {"version": "v2", "fraction": 1.0}}
    asyncio.run(plane.configure(_live(shadow=shadow, cache={"embeddings": True})))

    async def two() -> None:
        for texts in (["a", "b"], ["a", "c"]):
            await plane.embed(_call("acme"), "minilm", texts, None, "version", None, "input")
        for _ in range(200):
            if len(versions["v2"].calls) == 2:
                return
            await asyncio.sleep(0.01)

    asyncio.run(two())
    assert versions["v1"].calls == [["a", "b"], ["c"]]
    assert versions["v2"].calls == [["a", "b"], ["a", "c"]]


@pytest.mark.parametrize("auth", [True, False])
def test_catalog_items_and_queries_share_the_tenants_entries(auth: bool) -> None:
    plane, versions = _plane(_args(auth))
    asyncio.run(plane.configure(_live()))
    embed_items = item_embedder(plane.args, plane)
    owner = "acme" if auth else "default"  # the catalogs' one tenant when auth is off
    asyncio.run(embed_items(owner, "minilm/v1", ["red trail shoe", "blue sock"]))
    query = _call("acme") if auth else CallRecord()
    asyncio.run(plane.embed_version(query, "minilm", "v1", ["red trail shoe"], "query"))
    assert versions["v1"].calls == [["red trail shoe", "blue sock"]]  # the query: cached
    space = "minilm/v1@" + _sha("v1")
    kept = cache_keys("acme" if auth else NO_TENANT, space, ["blue sock"])
    assert plane.cache.memory.lookup(kept)[0] is not None  # the item, under that tenant
    assert plane.cache.serves(SEARCH, space)
    assert not plane.cache.serves(EMBEDDINGS, space)
    if auth:
        other = _call("globex")
        asyncio.run(plane.embed_version(other, "minilm", "v1", ["red trail shoe"], "query"))
        assert versions["v1"].calls[1:] == [["red trail shoe"]]


def _sha(version: str) -> str:
    return _args().models["minilm"].versions[version].artifact.sha256[:12]
