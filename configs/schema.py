"""The schema of servekit's part of `serve_config.yaml`.

Two kinds of settings, because Ray Serve treats them differently:

- `AppArgs` is the application's `args:`. Changing it changes the application's code
  version, so Serve replaces every replica. It declares what exists: models, their
  immutable versions (artifact uri + sha256, runtime, device) and request limits.
- `IngressLiveConfig` and `BatchLiveConfig` are deployments' `user_config:`. Serve
  applies them in place through `reconfigure()`, without restarting replicas. They
  hold what must change live: traffic weights, batch size and batch wait, the
  embedding cache.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from configs.features import FeatureSettings, lacks_for_recommender

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
INGRESS_DEPLOYMENT = "Ingress"
# `fault_injection` is refused unless the serving processes run with this set to 1:
# a production config file cannot switch it on by accident.
FAULT_INJECTION_ENV = "SERVEKIT_ALLOW_FAULT_INJECTION"
WEIGHT_TOTAL = 100
# Bounds that keep every tenant value storable (a 64-bit column, a date before year
# 10000), for the file's `auth` settings and the admin API's bodies alike.
# A rate under one every 10,000 s is a monthly quota's job; one far smaller (a
# subnormal float passes `> 0`) made a bucket's refill time infinite.
MIN_RATE_PER_S = 1e-4
MAX_REQUESTS_PER_S = 1e6
MAX_TEXTS_PER_S = 1e7
MAX_MONTHLY_TEXTS = 10**15
MAX_KEY_LIFETIME_S = 100 * 365 * 86400
# The most canary calls a rollout window holds (the latest; older ones drop off), so the
# most a policy's `min_requests` may ask for: more could never be reached.
CANARY_WINDOW_MAX_CALLS = 20_000


class _Strict(BaseModel):
    # Errors name the field and what is wrong, never the value: Serve prints a failed
    # build's error into its status and logs, and a secret typed into `args` by mistake
    # must not reach them.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ArtifactSpec(_Strict):
    """Where a version's bytes are and what they hash to."""

    uri: str = Field(
        min_length=1,
        description="Local path (relative to `artifact_root`), file:// or s3://bucket/key.",
    )
    sha256: Sha256 = Field(description="Hex sha256 of the artifact file; verified on load.")


class FaultInjection(_Strict):
    """Test-only faults a version's replicas inject into their own answers.

    Off unless written into the config file; nothing in a request can turn it on.
    It exists to rehearse canary rollback against a version that fails or is slow.
    """

    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that fail.")
    extra_latency_ms: int = Field(0, ge=0, le=60_000, description="Delay added to every call.")


class VersionSpec(_Strict):
    """One immutable model version."""

    artifact: ArtifactSpec
    runtime: Literal["onnx", "torch"] = Field(
        description="Runtime that loads the artifact; must match the package's own metadata."
    )
    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="gpu needs `ray_actor_options.num_gpus` > 0 on its deployment."
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads per inference; 0: one per physical core the replica may run "
        "on, at most its container's CPU limit (ONNX Runtime and torch alike; given "
        "explicitly, so that none of ONNX Runtime's threads is pinned to one CPU).",
    )
    intra_op_spinning: Literal["during_run", "always", "never"] = Field(
        "during_run",
        description="How ONNX Runtime's threads wait for work. during_run: they busy-wait "
        "inside a run (no wake-up per parallel step) and sleep once it returns, so they "
        "leave the CPU to the request path between runs. always: they also spin for a "
        "while after each run (ONNX Runtime's default). never: they sleep at once. "
        "true/false are read as always/never.",
    )

    @field_validator("intra_op_spinning", mode="before")
    @classmethod
    def _spinning_from_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            return "always" if value else "never"
        return value

    busy_lanes: int = Field(
        1,
        ge=1,
        le=16,
        description="ONNX versions on CPU, inline or dedicated: batches run at once when "
        "requests queue up, each on one thread of a second session (about the model's size "
        "in memory). A lone request still runs on all intra_op_threads; 1: one batch at a "
        "time.",
    )
    micro_batch_size: int = Field(
        0,
        ge=0,
        le=4096,
        description="Texts per forward pass inside one batch (a batch's texts sorted by "
        "length, cut into passes of this many); 0: 8 on cpu, 64 on gpu.",
    )
    gpu_graphs: bool = Field(
        True,
        description="Torch versions on gpu: replay CUDA graphs, one per padded batch shape "
        "(rows to a power of two up to micro_batch_size, at most 256; tokens to a multiple "
        "of 16), captured when the replica loads; larger micro-batches run eagerly. false: "
        "launch every kernel eagerly.",
    )
    fault_injection: FaultInjection | None = Field(
        None,
        description="Test-only: make this version fail or slow down on purpose. Refused "
        f"unless the serving processes run with {FAULT_INJECTION_ENV}=1.",
    )

    @field_validator("fault_injection")
    @classmethod
    def _faults_only_in_tests(cls, value: FaultInjection | None) -> FaultInjection | None:
        if value is not None and os.environ.get(FAULT_INJECTION_ENV) != "1":
            raise ValueError(
                f"test-only setting, refused unless {FAULT_INJECTION_ENV}=1 is set in the "
                "environment of the processes that serve"
            )
        return value


class ModelSpec(_Strict):
    """A served model name and its versions."""

    task: Literal["text-embedding", "recommendation"] = Field(
        "text-embedding",
        description="What the model computes. recommendation: a two-tower recommender and "
        "its ranker (`/v1/recommendations`), ONNX, placed inline.",
    )
    versions: dict[Name, VersionSpec] = Field(min_length=1, description="Version name -> spec.")
    placement: Literal["dedicated", "inline"] = Field(
        "dedicated",
        description=(
            "dedicated: each version is its own deployment <model>-<version>. inline: the "
            "ingress replicas load the versions and run them in-process (small CPU models: "
            "no extra process hop; the ingress's autoscaling scales them)."
        ),
    )

    @model_validator(mode="after")
    def _versions_fit_placement_and_runtime(self) -> ModelSpec:
        for version, spec in self.versions.items():
            if self.placement == "inline" and spec.device != "cpu":
                raise ValueError(
                    f"versions.{version}.device: inline placement runs on the ingress's CPU"
                )
            if spec.busy_lanes > 1 and spec.runtime != "onnx":
                raise ValueError(f"versions.{version}.busy_lanes: needs runtime onnx")
            if self.task == "recommendation" and spec.runtime != "onnx":
                raise ValueError(f"versions.{version}.runtime: a recommender runs on onnx")
        if self.task == "recommendation" and self.placement != "inline":
            raise ValueError("placement: a recommender runs inline (its towers are small)")
        return self


class Limits(_Strict):
    """Per-request bounds enforced at the ingress before any model work."""

    max_inputs_per_request: int = Field(2048, ge=1, le=100_000)
    max_input_chars: int = Field(
        32_768, ge=1, le=10_000_000, description="Longest single text, in characters."
    )
    max_body_bytes: int = Field(8_000_000, ge=1024, le=1_000_000_000)


class HealthSettings(_Strict):
    """How a replica proves its runtime still answers (its `check_health`)."""

    hung_run_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A model run in flight longer than this marks the replica unhealthy "
        "(Serve then replaces it).",
    )
    probe_every_s: float = Field(
        5.0, gt=0, le=600, description="An idle version is probed at most this often."
    )
    probe_timeout_s: float = Field(
        5.0, gt=0, le=600, description="Bound on one health probe (a one-text inference)."
    )


class TenantLimits(_Strict):
    """Limits of a tenant that has none of its own (each may be overridden per tenant
    and per key through the admin API). Unset: unlimited."""

    model_config = ConfigDict(allow_inf_nan=False)

    requests_per_s: float | None = Field(
        None,
        ge=MIN_RATE_PER_S,
        le=MAX_REQUESTS_PER_S,
        description="Requests per second (token bucket of one second).",
    )
    texts_per_s: float | None = Field(
        None,
        ge=MIN_RATE_PER_S,
        le=MAX_TEXTS_PER_S,
        description="Texts per second (token bucket of one second).",
    )
    monthly_texts: int | None = Field(
        None, ge=1, le=MAX_MONTHLY_TEXTS, description="Texts per calendar month (UTC)."
    )


class AuthSettings(_Strict):
    """Tenant API keys, scopes, quotas and usage metering on the data plane."""

    model_config = ConfigDict(allow_inf_nan=False)

    enabled: bool = Field(True, description="Require an API key on every route but `exempt_paths`.")
    exempt_paths: list[str] = Field(
        default_factory=lambda: ["/v2/health/live", "/v2/health/ready", "/-/healthz"],
        description="Paths answered without a key (liveness and readiness probes).",
    )
    refresh_s: float = Field(
        1.0,
        gt=0,
        le=5,
        description="How often a replica checks the registry for changed keys; a revoked "
        "key is refused within this (plus one registry read) on every replica.",
    )
    rotation_overlap_s: float = Field(
        86_400,
        ge=0,
        le=MAX_KEY_LIFETIME_S,
        description="Default time a rotated key stays valid beside its successor.",
    )
    default_limits: TenantLimits = Field(
        default_factory=TenantLimits, description="Limits of tenants created without any."
    )
    limiter_fail_open: bool = Field(
        True,
        description="Admit requests when the shared limiter (Redis) cannot be reached, "
        "rather than refusing every tenant.",
    )
    usage_flush_s: float = Field(
        1.0, gt=0, le=60, description="How often counted usage is written to the registry."
    )
    metrics_tenants: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Tenant ids with their own Prometheus series; the rest count as `other`.",
    )


SHARD_DEPLOYMENT = "CatalogShard"


class CatalogSnapshotSpec(_Strict):
    """A catalog snapshot artifact (`servekit index build`): loaded by every replica
    instead of building the catalog's vector indexes, and seeding the catalog when the
    store does not have it yet."""

    tenant_id: str = Field(min_length=1, max_length=64, description="The catalog's tenant.")
    catalog: str = Field(min_length=1, max_length=64, description="The catalog's name.")
    artifact: ArtifactSpec


class SearchSettings(_Strict):
    """Semantic search over tenant catalogs (`/v1/catalogs`, `/v1/search`)."""

    enabled: bool = Field(True, description="Serve catalogs and search.")
    model: Name | None = Field(
        None,
        description="The embedding model of catalogs; default: the first text-embedding model.",
    )
    follow_s: float = Field(
        0.2, gt=0, le=1, description="How often a replica reads the catalog change log."
    )
    max_items_per_upsert: int = Field(1000, ge=1, le=10_000)
    max_k: int = Field(100, ge=1, le=1000, description="Largest `k` of a search.")
    hybrid_default: bool = Field(
        True, description="Fuse BM25 with the vector ranking unless the request says."
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="How hybrid ranking fuses: min-max normalised scores, 0.45 the vectors' "
        "and 0.55 BM25's "
        "(convex), or reciprocal ranks (rrf), which ignores how far ahead an exact match is.",
    )
    shards: int = Field(
        1,
        ge=1,
        le=64,
        description="Deployments the catalogs' items are split over (CatalogShard-<n>); "
        "1: the ingress holds them. Searches fan out to every shard and merge.",
    )
    snapshots: list[CatalogSnapshotSpec] = Field(
        default_factory=list,
        max_length=100,
        description="Catalog snapshot artifacts to start from (one per tenant and catalog).",
    )

    @model_validator(mode="after")
    def _one_snapshot_per_catalog(self) -> SearchSettings:
        seen: set[tuple[str, str]] = set()
        for n, snap in enumerate(self.snapshots):
            key = (snap.tenant_id, snap.catalog)
            if key in seen:
                raise ValueError(
                    f"snapshots[{n}]: a second snapshot of {snap.tenant_id}/{snap.catalog}"
                )
            seen.add(key)
        return self


class RecommendationSettings(_Strict):
    """`/v1/recommendations` (with a model of task `recommendation` under `models`)."""

    max_k: int = Field(100, ge=1, le=1000, description="Largest `k` of a request.")
    candidates: int = Field(
        150, ge=1, le=1000, description="The towers' candidates the ranker reorders (at least k)."
    )
    popular_window_s: float = Field(
        2_592_000, gt=0, description="Events within this window make an item popular."
    )
    popular_refresh_s: float = Field(
        5.0, gt=0, le=3600, description="How often a replica re-reads the popular items."
    )
    worker_process: bool = Field(
        True,
        description="Run recommendations in a process of their own beside each Ingress "
        "replica, started at its first recommendation (the request path stays in the "
        "Ingress); false: on the Ingress's event loop.",
    )
    worker_processes: int = Field(
        1,
        ge=1,
        le=16,
        description="How many recommendation worker processes each Ingress replica starts "
        "(with worker_process): requests go to the least busy. Each holds its own copy "
        "of the catalogs' recommendation index (about 170 MB with 5,000 items).",
    )


# The autoscaling policy of dedicated versions and catalog shards the ingress calls
# directly (it counts those calls; `deployments/replicas/direct_scaling.py`).
DIRECT_SCALING_POLICY = "deployments.replicas.direct_scaling:policy"


class AppArgs(_Strict):
    """Everything under the application's `args:`."""

    models: dict[Name, ModelSpec] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    request_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Bound on one model call, queueing included."
    )
    dedicated_calls: Literal["direct", "handle"] = Field(
        "direct",
        description=(
            "How the ingress calls dedicated versions and catalog shards: `direct` (a "
            "connection of servekit's own to each replica, Serve's handle whenever it is "
            "not open) or `handle` (Serve's handle only)."
        ),
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    recommendations: RecommendationSettings = Field(default_factory=RecommendationSettings)
    artifact_root: str | None = Field(
        None,
        description="Base folder of relative artifact uris; default: the project folder.",
    )
    artifact_cache_dir: str | None = Field(
        None,
        description="Resolved artifacts on a replica; default ~/.cache/servekit/artifacts.",
    )

    @model_validator(mode="after")
    def _unique_deployment_names(self) -> AppArgs:
        seen: dict[str, str] = {}
        for model, spec in self.models.items():
            for version in spec.versions:
                name = deployment_name(model, version)
                if name in seen:
                    raise ValueError(
                        f"models.{model}.versions.{version}: deployment name {name!r} "
                        f"is also produced by {seen[name]}"
                    )
                seen[name] = f"models.{model}.versions.{version}"
        return self

    @model_validator(mode="after")
    def _search_model_is_served(self) -> AppArgs:
        if self.search.model is not None and self.search.model not in self.models:
            raise ValueError(f"search.model: {self.search.model!r} is not among models")
        return self

    @model_validator(mode="after")
    def _recommender_fits(self) -> AppArgs:
        recommenders = [m for m, spec in self.models.items() if spec.task == "recommendation"]
        if len(recommenders) > 1:
            raise ValueError(f"models: one recommender at most (found {', '.join(recommenders)})")
        if recommenders and not self.search.enabled:
            raise ValueError(f"models.{recommenders[0]}: recommendations need search.enabled")
        if recommenders and self.search.shards > 1:
            raise ValueError(f"models.{recommenders[0]}: recommendations need search.shards: 1")
        if recommenders and not self.features.enabled:
            raise ValueError(f"models.{recommenders[0]}: recommendations need features.enabled")
        if recommenders and (lacks := lacks_for_recommender(self.features.loaded())):
            raise ValueError(
                f"features.definitions: the recommender models.{recommenders[0]} reads "
                f"what the definitions lack: {'; '.join(lacks)} (configs/features.yaml "
                "defines them)"
            )
        if self.search.model is not None and self.search.model in recommenders:
            raise ValueError(f"search.model: {self.search.model!r} is a recommender")
        if len(recommenders) == len(self.models):
            raise ValueError("models: a recommender needs a text-embedding model beside it")
        return self

    def search_model(self) -> str:
        """The embedding model of catalogs."""
        return self.search.model or next(
            m for m, spec in self.models.items() if spec.task == "text-embedding"
        )

    def recommender(self) -> str | None:
        """The recommender model's name (None: recommendations are off)."""
        return next((m for m, s in self.models.items() if s.task == "recommendation"), None)

    def shard_names(self) -> list[str]:
        """The catalog shards' deployment names (none when the ingress holds the items)."""
        if not self.search.enabled or self.search.shards == 1:
            return []
        return [f"{SHARD_DEPLOYMENT}-{n}" for n in range(self.search.shards)]

    def deployment_names(self) -> dict[str, tuple[str, str]]:
        """`<model>-<version>` -> (model, version), for every version with a deployment."""
        return {
            deployment_name(model, version): (model, version)
            for model, spec in self.models.items()
            if spec.placement == "dedicated"
            for version in spec.versions
        }

    def inline_versions(self) -> list[tuple[str, str]]:
        """(model, version) of every embedding version the ingress runs in-process
        (a recommender's versions are loaded by the recommendation service)."""
        return [
            (model, version)
            for model, spec in self.models.items()
            if spec.placement == "inline" and spec.task == "text-embedding"
            for version in spec.versions
        ]


class _BatchBounds(_Strict):
    """How large one model call may get: in requests and in texts."""

    max_batch_size: int = Field(
        16, ge=1, le=4096, description="Most requests merged into one model call."
    )
    max_batch_texts: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Most texts in one model call; a single larger request runs alone.",
    )


class InlineBatchingConfig(_BatchBounds):
    """Batching of a version placed inline in the ingress, applied live."""

    max_queued_texts: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Most texts waiting for this version in one ingress replica; beyond "
        "it a request is refused at once with 503 and Retry-After (an empty queue admits "
        "any request).",
    )
    max_queue_wait_s: float = Field(
        0.5,
        gt=0,
        le=600,
        description="Longest a request may expect to wait for its batch: the texts ahead "
        "of it over the version's measured throughput (texts/s). A request that would "
        "wait longer is refused at once with 503 and Retry-After.",
    )


class BatchLiveConfig(InlineBatchingConfig):
    """A dedicated version's `user_config`: its replica's batching, applied live. The
    replica batches as an inline version does (a request arriving while it is idle runs
    at once; requests arriving while a batch runs go together next); its queue bounds
    refuse nothing unless set."""

    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=1.0,
        description="How long a request arriving at an idle replica waits for others to "
        "join its batch, in seconds; 0: it runs at once.",
    )
    # Unlike inline, no refusal by default: Serve's max_queued_requests bounds the
    # queue in front of the replica, and the request's deadline the wait.
    max_queued_texts: int = Field(
        1_000_000,
        ge=1,
        le=1_000_000,
        description="Most texts waiting in one replica; beyond it a request is refused at "
        "once with 503 and Retry-After (an empty queue admits any request).",
    )
    max_queue_wait_s: float = Field(
        600,
        gt=0,
        le=600,
        description="Longest a request may expect to wait for its batch in the replica, by "
        "its measured throughput; a request that would wait longer is refused at once "
        "with 503 and Retry-After.",
    )


class ShadowSpec(_Strict):
    """Mirror a sample of a model's requests to another version, off the caller's path."""

    version: Name = Field(description="The version that receives the copies.")
    fraction: float = Field(gt=0, le=1, description="Share of requests mirrored.")


class RolloutPolicy(_Strict):
    """Watch a canary version and take its traffic away when it misbehaves."""

    canary: Name = Field(description="The version under watch.")
    max_error_rate: float = Field(
        0.05, ge=0, le=1, description="Failed share of canary calls that triggers rollback."
    )
    max_p95_latency_ms: float = Field(
        1000.0, gt=0, description="p95 of canary call latency that triggers rollback."
    )
    window_s: float = Field(60.0, gt=0, le=3600, description="Sliding window judged.")
    min_requests: int = Field(
        20,
        ge=1,
        description="Canary calls in the window before any judgement; at most "
        f"{CANARY_WINDOW_MAX_CALLS} (the window keeps that many of the latest calls).",
    )

    @field_validator("min_requests")
    @classmethod
    def _reachable(cls, value: int) -> int:
        if value > CANARY_WINDOW_MAX_CALLS:
            raise ValueError(
                f"at most {CANARY_WINDOW_MAX_CALLS}: the canary window keeps the latest "
                f"{CANARY_WINDOW_MAX_CALLS} calls, so {value} could never be reached and the "
                "canary would never be judged"
            )
        return value


class CacheLiveConfig(_Strict):
    """The embedding cache of the ingress replicas: vectors of texts already embedded,
    per tenant and version (a memory tier per replica; Redis, shared, when configured)."""

    enabled: bool = Field(True, description="Use the cache at all (false: clear and bypass).")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        le=64 * 1024**3,
        description="Bound on the memory tier of one ingress replica, in bytes (vectors "
        "plus key overhead); the least recently used entries go first. 0: Redis only.",
    )
    ttl_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86_400,
        description="How long an entry is kept after it is written, in both tiers.",
    )
    embeddings: bool = Field(
        False,
        description="Cache `/v1/embeddings` and the inference protocol's texts (off: every "
        "call runs the model, as callers of an embeddings API may expect).",
    )
    search: bool = Field(True, description="Cache search queries and catalog items.")


class IngressLiveConfig(_Strict):
    """The ingress deployment's `user_config`: traffic, shadowing, rollout, batching and
    the embedding cache; applied live."""

    traffic: dict[Name, dict[Name, int]] = Field(
        description="model -> version -> weight in percent; weights of a model sum to 100."
    )
    shadow: dict[Name, ShadowSpec] = Field(
        default_factory=dict, description="model -> version mirrored a sample of requests."
    )
    rollout: dict[Name, RolloutPolicy] = Field(
        default_factory=dict, description="model -> canary watch with automatic rollback."
    )
    batching: dict[str, InlineBatchingConfig] = Field(
        default_factory=dict,
        description="<model>-<version> -> batching of versions placed inline in the ingress.",
    )
    cache: CacheLiveConfig = Field(
        default_factory=CacheLiveConfig, description="The embedding cache (see its fields)."
    )

    @model_validator(mode="after")
    def _weights(self) -> IngressLiveConfig:
        for model, weights in self.traffic.items():
            for version, weight in weights.items():
                if not 0 <= weight <= WEIGHT_TOTAL:
                    raise ValueError(
                        f"traffic.{model}.{version}: weight {weight} is outside 0..100"
                    )
            total = sum(weights.values())
            if total != WEIGHT_TOTAL:
                raise ValueError(f"traffic.{model}: weights sum to {total}, expected 100")
        return self

    def versions_in_use(self, model: str) -> set[str]:
        """Versions of `model` with traffic, a shadow copy or a canary watch."""
        versions = {v for v, weight in self.traffic.get(model, {}).items() if weight > 0}
        if (shadow := self.shadow.get(model)) is not None:
            versions.add(shadow.version)
        if (rollout := self.rollout.get(model)) is not None:
            versions.add(rollout.canary)
        return versions

    def check_against(self, args: AppArgs) -> list[str]:
        """Problems with these weights given the declared models (empty when fine)."""
        problems = []
        for model, weights in self.traffic.items():
            if model not in args.models:
                problems.append(f"traffic.{model}: model is not declared under args.models")
                continue
            for version in weights:
                if version not in args.models[model].versions:
                    problems.append(
                        f"traffic.{model}.{version}: version is not declared under "
                        f"args.models.{model}.versions"
                    )
        for model in args.models:
            if model not in self.traffic:
                problems.append(f"traffic.{model}: no weights for a declared model")
        for section, entries in (("shadow", self.shadow), ("rollout", self.rollout)):
            for model, entry in entries.items():
                version = entry.version if isinstance(entry, ShadowSpec) else entry.canary
                field = "version" if isinstance(entry, ShadowSpec) else "canary"
                if model not in args.models:
                    problems.append(f"{section}.{model}: model is not declared under args.models")
                elif version not in args.models[model].versions:
                    problems.append(
                        f"{section}.{model}.{field}: {version} is not declared under "
                        f"args.models.{model}.versions"
                    )
        inline = {deployment_name(m, v) for m, v in args.inline_versions()}
        for name in self.batching:
            if name not in inline:
                problems.append(f"batching.{name}: not a version placed inline")
        for model, policy in self.rollout.items():
            others = [v for v, w in self.traffic.get(model, {}).items() if w and v != policy.canary]
            if model in self.traffic and not others:
                problems.append(
                    f"rollout.{model}.canary: no other version has traffic to fall back to"
                )
        return problems


def deployment_name(model: str, version: str) -> str:
    """The Serve deployment that runs one version."""
    return f"{model}-{version}"
