"""Settings of the Kubernetes deployment: what `cluster/rayservice.yaml` and
`cluster/networkpolicy.yaml` are generated from, besides `serve_config.yaml` itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# A DNS-1123 label: what Kubernetes takes as a namespace, a service account or a group name.
DnsLabel = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
]
# What the KubeRay operator takes as a RayService name: a DNS-1035 label (a letter first)
# of at most 47 characters, so that the RayCluster names it derives stay labels too.
RayServiceName = Annotated[
    str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=47)
]
# Kubernetes quantities as the API server parses them: CPUs whole, decimal or in
# millicores ("4", "0.5", "500m"); memory in bytes with an optional suffix ("16Gi").
CpuQuantity = Annotated[str, StringConstraints(pattern=r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")]
MemoryQuantity = Annotated[
    str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$")
]


class _Strict(BaseModel):
    # Errors name the field and what is wrong, never the value: a password written into
    # the file by mistake must not reach a CI log through them.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class PodResources(_Strict):
    """Requests and limits of a Ray pod (requests = limits: guaranteed QoS)."""

    cpu: CpuQuantity = Field(description="Kubernetes CPU quantity, for example '4'.")
    memory: MemoryQuantity = Field(description="Kubernetes memory quantity, for example '16Gi'.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod.")


class WorkerGroup(_Strict):
    """A KubeRay worker group the autoscaler sizes between min and max."""

    name: DnsLabel
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    resources: PodResources
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerate_gpu_taint: bool = False

    @model_validator(mode="after")
    def _min_within_max(self) -> WorkerGroup:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas: above max_replicas")
        return self


class NetworkAccess(_Strict):
    """Who may open connections to the Ray pods from outside them (the NetworkPolicy).

    Ray pods of the service always reach each other on every port. Everything not
    listed here is refused: the dashboard (8265), GCS (6379) and Ray client (10001) are
    reachable only from the KubeRay operator's namespace (the dashboard) and the pods
    themselves.
    """

    serve_client_namespaces: list[DnsLabel] = Field(
        min_length=1,
        description="Namespaces whose pods may call the Serve HTTP port (8000).",
    )
    operator_namespace: DnsLabel = Field(
        "kuberay-system",
        description="Namespace of the KubeRay operator: it submits the Serve config "
        "through the dashboard port (8265) and checks the head's Serve proxy (8000).",
    )
    monitoring_namespace: DnsLabel | None = Field(
        "monitoring",
        description="Namespace of the Prometheus that scrapes Ray's metrics port; "
        "null admits no scraper.",
    )


class StoreAccess(_Strict):
    """Where the serving processes on the cluster find the tenant registry, the shared
    rate limits and their secrets (all created by the CDK stack). They reach the
    processes as environment variables; no secret value is in this file or the manifest.
    """

    aws_secret_id: str = Field(
        min_length=1,
        description="Secrets Manager secret (name or ARN) whose JSON holds hmac_secret, "
        "admin_token, redis_password, registry_dsn, cache_redis_url (the embedding "
        "cache) and features_redis_url (the online features): SERVEKIT_AWS_SECRET_ID.",
    )
    redis_url: str = Field(
        description="Redis of the shared rate limits, rediss://host:port/db (TLS, no "
        "password: redis_password is in the secret): SERVEKIT_REDIS_URL.",
    )

    @field_validator("redis_url")
    @classmethod
    def _tls_without_password(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme != "rediss" or not rest:
            raise ValueError("expected rediss://host:port/db (TLS: the stack's Redis has no other)")
        if "@" in rest.split("/", 1)[0]:
            raise ValueError("holds credentials: the Redis password belongs in the secret")
        return value


class TracingSettings(_Strict):
    """Where the serving processes send traces (OpenTelemetry, OTLP over HTTP); they
    reach the processes as OpenTelemetry's own environment variables."""

    otlp_endpoint: str | None = Field(
        None,
        description="The collector's OTLP/HTTP base URL (spans go to <url>/v1/traces), "
        "e.g. http://otel-collector.monitoring:4318: OTEL_EXPORTER_OTLP_ENDPOINT. Null: "
        "nothing is exported; access lines still carry each request's trace id.",
    )
    sample_ratio: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of requests without a caller's traceparent that are traced "
        "(a caller's sampled flag decides for its own): OTEL_TRACES_SAMPLER_ARG.",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise ValueError("expected an http:// or https:// URL of the OTLP collector")
        if "@" in rest.split("/", 1)[0]:
            raise ValueError("holds credentials: a collector's token belongs in a secret")
        return value


class ClusterSettings(_Strict):
    """`cluster/settings.yaml`."""

    name: RayServiceName = Field(description="RayService name.")
    namespace: DnsLabel
    image: str = Field(description="Serving image, with a pinned tag (never latest).")
    gpu_image: str = Field(description="Serving image for GPU workers, pinned tag.")
    ray_version: str
    service_account: DnsLabel = Field(
        description="Kubernetes service account of the head (IRSA): reads the artifacts "
        "and the secret; KubeRay binds the Ray autoscaler's Role (patch pods) to it."
    )
    worker_service_account: DnsLabel = Field(
        description="Kubernetes service account of the workers (IRSA): reads the artifacts "
        "and the secret, and holds no Kubernetes permission."
    )
    artifact_root: str = Field(description="s3:// prefix the relative artifact uris live under.")
    aws_region: str
    head: PodResources
    worker_groups: list[WorkerGroup] = Field(min_length=1)
    autoscaler_idle_timeout_s: int = Field(60, ge=0)
    network: NetworkAccess
    stores: StoreAccess
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("image", "gpu_image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if "@sha256:" in value:
            return value
        tag = value.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            raise ValueError("expected a pinned tag (repository:1.2.3) or digest, never latest")
        return value

    @model_validator(mode="after")
    def _workers_apart_from_the_head(self) -> ClusterSettings:
        if self.worker_service_account == self.service_account:
            raise ValueError(
                "worker_service_account: the head's service account; workers need their "
                "own, without the Ray autoscaler's permissions"
            )
        return self

    @field_validator("worker_groups")
    @classmethod
    def _unique_group_names(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [group.name for group in groups]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"name used by more than one group: {', '.join(twice)}")
        return groups


def load_cluster_settings(path: Path) -> ClusterSettings:
    """Read and validate the cluster settings file."""
    return ClusterSettings.model_validate(yaml.safe_load(path.read_text()))
