"""Settings read from the environment, and path resolution shared by the layers."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

# The project folder: where `serve_config.yaml` and the local `artifacts/` store live
# when servekit runs from a checkout or from the serving image.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Ray Serve settings servekit runs with, locally (`servekit serve`) and on the cluster
# (the RayService's container env). They must be in the environment of every Ray
# process, so they are set before Ray starts; a value already in the environment wins.
#   RAY_SERVE_ENABLE_HA_PROXY: HAProxy in front of the ingress replicas instead of
#     Serve's Python proxy, which takes one Python process hop out of every request
#     (measured: 2x the small-request throughput on 2 cores; see the README).
#   RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0: the ingress's handlers run on the
#     replica's own event loop instead of a second loop in another thread, which
#     saves two thread hand-offs per request (measured: a no-op route 0.50 -> 0.32 ms
#     per request at one connection). servekit's handlers never block their loop:
#     inference runs in worker threads.
#   RAY_worker_niceness=0: replicas run at the machine's normal priority. Ray starts
#     its workers 15 steps below it by default, so any other process at normal priority
#     (a load balancer, a sidecar, a client on the same node) pre-empts the replica that
#     serves the requests (measured on 2 cores with a load generator beside it: one
#     connection 143 -> 185 embeddings/s, 16 connections 411 -> 506, p50 6.1 -> 4.9 ms).
#   TOKENIZERS_PARALLELISM=false: a batch's few texts are tokenized on the calling
#     thread; the tokenizer's own thread pool would compete with the model's threads.
SERVE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_worker_niceness": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_serve_env() -> None:
    """Put servekit's Ray Serve settings into this process's environment."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


def artifact_root(configured: str | None) -> Path:
    """Base folder for relative artifact uris: config, then env, then the project."""
    root = configured or os.environ.get("SERVEKIT_ARTIFACT_ROOT")
    return Path(root) if root else PROJECT_ROOT


def resolve_artifact_uri(uri: str, configured_root: str | None) -> str:
    """An absolute uri. S3 uris stay as they are; a relative path is joined to the
    artifact root, which may itself be an S3 prefix (as on a cluster)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return uri
    path = Path(parsed.path) if parsed.scheme == "file" else Path(uri)
    if path.is_absolute():
        return str(path)
    root = configured_root or os.environ.get("SERVEKIT_ARTIFACT_ROOT")
    if root and root.startswith("s3://"):
        return f"{root.rstrip('/')}/{path.as_posix()}"
    return str(artifact_root(configured_root) / path)
