"""The one data plane every protocol adapter calls: embed (and, later, search and
recommend) on parsed values. It picks the version (split, sticky key, pin) once,
checks what depends on the version, looks the texts up in the embedding cache, calls
the version for the rest by the request's deadline, mirrors a shadow copy, and tells
the envelope what the request resolved to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from configs.schema import AppArgs, IngressLiveConfig
from deployments.errors import BadRequest, NotFound
from deployments.limits import check_count, check_lengths
from deployments.observability.tracing import step
from deployments.replicas.backend import EmbedResult
from deployments.routing.router import VersionRouter
from deployments.tenancy.access import Access
from deployments.tenancy.principal import Principal
from stores.embed_cache import Cached, CacheKey, EmbedCache, MemoryStore, cache_keys

READY_TTL_S = 5.0
NOT_READY_TTL_S = 1.0
# What the embedding cache is used for (its live settings switch each on or off).
EMBEDDINGS, SEARCH = "embeddings", "search"
NO_TENANT = "-"  # the cache's tenant when auth is off
# Texts up to this many characters in all are keyed on the event loop (about 4 us per
# short text); longer requests in a worker thread.
LOOP_HASH_MAX_CHARS = 4096


@dataclass
class CallRecord:
    """What one request resolved to, for its log line and metrics."""

    model: str = "-"
    version: str = "-"
    inputs: int = 0
    principal: Principal | None = None  # None when auth is off (or the route is exempt)
    headers: dict[str, str] = field(default_factory=dict)  # added to the response


@dataclass(frozen=True)
class Embedded:
    """What `embed` answers: the version that served, its vectors and token count."""

    model: str
    version: str
    vectors: npt.NDArray[np.float32]
    tokens: int


class DataPlane:
    """Embeddings over version backends; readiness and metadata of versions."""

    def __init__(
        self,
        args: AppArgs,
        router: VersionRouter,
        access: Access | None = None,
        cache: EmbedCache | None = None,
    ) -> None:
        self.args = args
        self.router = router
        self.admission = access.admission if access is not None else None
        self.cache = cache if cache is not None else EmbedCache(MemoryStore(0))
        self._ready: dict[tuple[str, str], tuple[bool, float]] = {}
        # The cache's name of each version: its artifact's digest rides along, so a
        # version name ever pointed at other bytes never meets the old vectors.
        self._spaces = {
            (model, version): f"{model}/{version}@{spec.artifact.sha256[:12]}"
            for model, versions in args.models.items()
            for version, spec in versions.versions.items()
        }

    async def configure(self, live: IngressLiveConfig) -> None:
        """Apply live settings: the router's traffic, shadow and rollout, and the cache's
        settings and versions (those without traffic, shadow or canary are dropped)."""
        self.router.configure(live)
        settings = live.cache
        uses = [u for u, on in ((EMBEDDINGS, settings.embeddings), (SEARCH, settings.search)) if on]
        self.cache.configure(settings.enabled, settings.max_bytes, settings.ttl_s, uses)
        self.cache.retain(
            [self._spaces[(m, v)] for m in self.args.models for v in live.versions_in_use(m)]
        )

    async def embed(
        self,
        call: CallRecord,
        model: str,
        texts: list[str],
        pinned: str | None,
        pin_source: str,
        key: str | None,
        field: str,
        dimensions: int | None = None,
    ) -> Embedded:
        """Embed `texts` with `model`: the pinned version, else the split's (sticky by
        `key`). `field` names the texts in errors (`input`, `inputs.0.data`)."""
        self.authorize(call, model, pinned)
        call.model = model if model in self.args.models else "-"
        version = self.router.choose(model, pinned, pin_source, key)
        call.version, call.inputs = version, len(texts)
        self.check_embedder(model)
        limits = self.args.limits
        # Every check of the request itself before admission: a refused request
        # takes nothing from the caller's rate limits or monthly quota.
        check_count(len(texts), limits.max_inputs_per_request, field)
        check_lengths(texts, limits.max_input_chars, field)
        if dimensions is not None:
            dim = (await self.metadata(model, version))["embedding_dim"]
            if dimensions != dim:
                raise BadRequest(f"dimensions: {model} returns {dim} dimensions")
        await self.admit(call, len(texts), field)
        deadline = time.monotonic() + self.args.request_timeout_s
        vectors, tokens = await self.embed_cached(
            EMBEDDINGS, tenant_of(call), model, version, texts, deadline
        )
        if pinned is None:
            self.router.maybe_shadow(model, version, texts, vectors)
        return Embedded(model, version, vectors, sum(tokens))

    async def embed_version(
        self, call: CallRecord, model: str, version: str, texts: list[str], field: str
    ) -> npt.NDArray[np.float32]:
        """Embed with a version the caller did not pin (chosen by a pipeline, e.g. the
        one whose index serves a search): limits, admission, the request's deadline."""
        call.model, call.version, call.inputs = model, version, len(texts)
        limits = self.args.limits
        check_count(len(texts), limits.max_inputs_per_request, field)
        check_lengths(texts, limits.max_input_chars, field)
        await self.admit(call, len(texts), field)
        deadline = time.monotonic() + self.args.request_timeout_s
        tenant = tenant_of(call)
        vectors, _ = await self.embed_cached(SEARCH, tenant, model, version, texts, deadline)
        return vectors

    async def embed_cached(
        self,
        use: str,
        tenant: str,
        model: str,
        version: str,
        texts: list[str],
        deadline: float,
        cold: bool = False,
    ) -> EmbedResult:
        """Vectors and per-text token counts of `texts`, in order: from the cache where
        it has them (when it serves `use`), the rest embedded by the version (each
        distinct text once) and stored for `tenant`."""
        space = self._spaces.get((model, version))
        if not texts or space is None or not self.cache.serves(use, space):
            with step("model", model=model, version=version, texts=len(texts)):
                return await self.router.embed(model, version, texts, deadline)
        if sum(map(len, texts)) <= LOOP_HASH_MAX_CHARS:
            keys = cache_keys(tenant, space, texts)
        else:  # normalizing and hashing long texts would hold the event loop
            keys = await asyncio.to_thread(cache_keys, tenant, space, texts)
        with step("cache lookup", texts=len(keys)):
            found = await self.cache.get(use, keys)
        rows: dict[CacheKey, int] = {}  # a missing key -> its row among the texts embedded
        for n, (key, entry) in enumerate(zip(keys, found, strict=True)):
            if entry is None and key not in rows:
                rows[key] = n
        fresh: npt.NDArray[np.float32] | None = None
        counts: list[int] = []
        if rows:
            todo = list(rows.values())
            with step("model", model=model, version=version, texts=len(todo)):
                fresh, counts = await self.router.embed(
                    model, version, [texts[n] for n in todo], deadline
                )
            self.cache.put(
                [
                    (keys[n], Cached(fresh[row].astype("<f4").tobytes(), counts[row]))
                    for row, n in enumerate(todo)
                ],
                cold,
            )
            rows = {keys[n]: row for row, n in enumerate(todo)}
        return _assemble(keys, found, rows, fresh, counts)

    @staticmethod
    def authorize(call: CallRecord, model: str, pinned: str | None) -> None:
        """403 unless the caller's key may use `model` (served or not: no hint which)
        and, when it names a version, may pin one."""
        if call.principal is not None:
            call.principal.check_model(model)
            if pinned is not None:
                call.principal.check_pin()

    async def admit(self, call: CallRecord, texts: int, field: str | None = None) -> None:
        """Take one request and `texts` texts from the caller's limits (429 when over; a
        400 naming `field`, the request's texts, when they never fit); the `RateLimit`
        headers go on the response."""
        if call.principal is not None and self.admission is not None:
            with step("admission", texts=texts):
                call.headers.update(await self.admission.admit(call.principal, texts, field))

    def check_target(
        self, model: str, pinned: str | None, source: str, call: CallRecord | None = None
    ) -> None:
        """403 for a model or pin the caller may not use, 404 for a model, or a pinned
        version, not served here, 400 for a model that embeds no texts (before any
        parsing)."""
        if call is not None:
            self.authorize(call, model, pinned)
        if pinned is not None or model not in self.args.models:
            self.router.choose(model, pinned, source, None)
        self.check_embedder(model)

    def check_embedder(self, model: str) -> None:
        """400 for a served model that embeds no texts (a recommender), before the
        request is admitted: a refused request takes nothing from the caller's limits."""
        if self.args.models[model].task != "text-embedding":
            raise BadRequest(f"model: {model} is a recommender; call /v1/recommendations")

    def check_model(self, model: str, version: str | None = None) -> None:
        """404 for a model (or version) not served here."""
        spec = self.args.models.get(model)
        if spec is None:
            raise NotFound("model: not served here")
        if version is not None and version not in spec.versions:
            raise NotFound(f"version: {model} has no such version")

    def primary(self, model: str) -> str:
        """The version with the most traffic (the first declared when none has any)."""
        weights = self.router.weights(model)
        if weights:
            return max(weights, key=lambda v: weights[v])
        return next(iter(self.args.models[model].versions))

    async def metadata(self, model: str, version: str) -> dict[str, Any]:
        """Signature and runtime facts of one version."""
        return await self.router.backends[(model, version)].metadata()

    async def ready(self, models: list[str]) -> bool:
        """Whether every version with traffic of `models` has a ready replica."""
        targets: list[tuple[str, str]] = []
        for model in models:
            weights = self.router.weights(model)
            if not weights:
                return False
            targets.extend((model, version) for version in weights)
        return all(await asyncio.gather(*(self.version_ready(m, v) for m, v in targets)))

    async def version_ready(self, model: str, version: str) -> bool:
        """Whether one version has a ready replica (a dedicated one's answer is kept
        a few seconds)."""
        backend = self.router.backends[(model, version)]
        if backend.placement == "inline":  # in this process: no call, no cache
            return await backend.ready()
        now = time.monotonic()
        cached = self._ready.get((model, version))
        if cached and cached[1] > now:
            return cached[0]
        ok = await backend.ready()
        self._ready[(model, version)] = (ok, now + (READY_TTL_S if ok else NOT_READY_TTL_S))
        return ok


def tenant_of(call: CallRecord) -> str:
    """Whose entries a request's texts are, in the embedding cache: the caller's tenant."""
    return call.principal.tenant_id if call.principal is not None else NO_TENANT


def _assemble(
    keys: list[CacheKey],
    found: list[Cached | None],
    rows: dict[CacheKey, int],
    fresh: npt.NDArray[np.float32] | None,
    counts: list[int],
) -> EmbedResult:
    """One vector and token count per text, in order: cached, or row `rows[key]` of
    what the version answered (list in, list out)."""
    dim = fresh.shape[1] if fresh is not None else len(next(e for e in found if e).vector) // 4
    vectors = np.empty((len(keys), dim), dtype=np.float32)
    tokens: list[int] = []
    for n, (key, entry) in enumerate(zip(keys, found, strict=True)):
        if entry is not None:
            vectors[n] = np.frombuffer(entry.vector, dtype="<f4")
            tokens.append(entry.tokens)
        else:
            assert fresh is not None
            vectors[n] = fresh[rows[key]]
            tokens.append(counts[rows[key]])
    return vectors, tokens
