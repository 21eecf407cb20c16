"""Settings of the Kubernetes deployment: what `cluster/rayservice.yaml` is generated from,
besides `serve_config.yaml` itself."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodResources(_Strict):
    """Requests and limits of a Ray pod (requests = limits: guaranteed QoS)."""

    cpu: str = Field(description="Kubernetes CPU quantity, for example '4'.")
    memory: str = Field(description="Kubernetes memory quantity, for example '16Gi'.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod.")


class WorkerGroup(_Strict):
    """A KubeRay worker group the autoscaler sizes between min and max."""

    name: str
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    resources: PodResources
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerate_gpu_taint: bool = False


class ClusterSettings(_Strict):
    """`cluster/settings.yaml`."""

    name: str = Field(description="RayService name.")
    namespace: str
    image: str = Field(description="Serving image, with a pinned tag (never latest).")
    gpu_image: str = Field(description="Serving image for GPU workers, pinned tag.")
    ray_version: str
    service_account: str = Field(description="Kubernetes service account with S3 read (IRSA).")
    artifact_root: str = Field(description="s3:// prefix the relative artifact uris live under.")
    aws_region: str
    head: PodResources
    worker_groups: list[WorkerGroup] = Field(min_length=1)
    autoscaler_idle_timeout_s: int = Field(60, ge=0)


def load_cluster_settings(path: Path) -> ClusterSettings:
    """Read and validate the cluster settings file."""
    return ClusterSettings.model_validate(yaml.safe_load(path.read_text()))
