"""Settings read from the environment, and path resolution shared by the layers."""

from __future__ import annotations

import gc
import os
import sys
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
#   RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5: Serve's controller runs its control loop
#     every 0.5 s instead of every 0.1 s. Each round asks GCS for the nodes and checks
#     every replica and proxy: idle, the controller and GCS woke about 690 times a
#     second between them (410 and 280 of their threads' switches), and each wake-up
#     on a core where a model run's thread works holds that run back at its next
#     barrier. Deploys, health checks and autoscaling act within 0.5 s instead of
#     0.1 s (serve_config.yaml checks health every 10 s and scales after delays of
#     10 s and more anyway).
#     Measured on 2 cores (see the README, "What the instance does while idle"): a
#     model's batch-1 runs beside the idle service p99 6.1-6.2 -> 4.5 ms; one
#     connection through HTTP 235-241 -> 249-268 requests/s, p99 11-12 -> 9.7-11 ms.
#   RAY_SERVE_HAPROXY_METRICS_ENABLED=0: HAProxy sends no metric line per request to
#     Serve's HAProxy manager, a Python process that woke and parsed each one while
#     the next request's model ran. Serve's own per-request HTTP metrics from HAProxy
#     (`ray_serve_num_http_requests_total` and its family) go with it; servekit's request
#     metrics (recorded in the Ingress) and HAProxy's own exporter stay. Measured:
#     HAProxy's cost at one connection 0.23-0.68 -> 0.09-0.13 ms at the median, p99
#     9.4-10.5 -> 6.6-7.9 ms.
SERVE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_worker_niceness": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}

# What a local instance (`servekit serve`, `make serve`, the tests' instance) sets
# besides, and the RayService does not:
#   RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2: how long an ingress replica that
#     is being replaced or retired keeps answering after it left HAProxy's list. Ray's
#     default, 30 s, lets load balancers in front of a cluster deregister it, and the
#     cluster keeps it. On one machine HAProxy is all there is in front, Ray rewrites
#     its list itself and it retries a refused connection on another replica: 2 s
#     covers that, where 30 s added half a minute to every local rollout that replaces
#     the Ingress (a change under `args`, its replicas scaled down).
LOCAL_SERVE_ENV: dict[str, str] = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}

# How long a thread may hold the GIL while another waits for it (CPython's default is
# 5 ms). A serving replica's event loop shares the GIL with its worker threads (catalog
# searches, store reads, model calls that release it only part of the time): with the
# default, each time the loop gives the GIL up for a socket it may wait 5 ms to get it
# back, and requests queue while cores idle. Set at replica start (measured on 2 cores,
# same run: recommendations at 16 connections 150-175 -> 195-205/s, embeddings
# 334-386 -> 404-465/s; 0.5 ms was no better than 1 ms).
GIL_SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """What a serving replica sets in its own interpreter before it serves: the GIL's
    switch interval, and everything it holds by then (Ray, the web stack, servekit's
    modules: a full garbage collection of them took about 100 ms here) moved out of the
    collector's reach (`gc.freeze`), so a full collection while serving scans only what
    was made since instead of pausing every request for that long."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.freeze()


def apply_serve_env() -> None:
    """Put servekit's Ray Serve settings for a local instance into this process's
    environment (a value already there wins)."""
    for key, value in {**SERVE_ENV, **LOCAL_SERVE_ENV}.items():
        os.environ.setdefault(key, value)


def artifact_root(configured: str | None) -> Path:
    """Base folder for relative artifact uris: config, then env, then the project."""
    root = configured or os.environ.get("SERVEKIT_ARTIFACT_ROOT")
    return Path(root) if root else PROJECT_ROOT


def resolve_artifact_uri(uri: str, configured_root: str | None) -> str:
    """An absolute uri. S3 uris stay as they are (with the scheme in lower case); a
    relative path is joined to the artifact root, which may itself be an S3 prefix
    (as on a cluster)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return _lowercase_scheme(uri)
    path = Path(parsed.path) if parsed.scheme == "file" else Path(uri)
    if path.is_absolute():
        return str(path)
    root = configured_root or os.environ.get("SERVEKIT_ARTIFACT_ROOT")
    if root and urlparse(root).scheme == "s3":
        return f"{_lowercase_scheme(root).rstrip('/')}/{path.as_posix()}"
    return str(artifact_root(configured_root) / path)


def _lowercase_scheme(uri: str) -> str:
    """`S3://bucket/key` as `s3://bucket/key`: URL schemes are case-insensitive (which
    `urlparse` honours), so whatever compares the text gets one spelling."""
    scheme = urlparse(uri).scheme
    return scheme + uri[len(scheme) :]
