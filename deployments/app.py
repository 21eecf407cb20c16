"""The one composition root: `build_app(args)` binds every deployment.

`serve_config.yaml` names `deployments.app:build_app` as its import path; Serve calls
it with the application's `args`, then applies the file's per-deployment settings
(replicas, autoscaling, resources, `user_config`) by deployment name.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from configs.schema import INGRESS_DEPLOYMENT, SHARD_DEPLOYMENT, AppArgs, BatchLiveConfig
from deployments.catalog_shard import CatalogShard
from deployments.http.api import api
from deployments.ingress import Ingress
from deployments.replicas.model_server import ModelServer, model_server_args

# Code defaults; serve_config.yaml's `deployments:` entries override them by name.
_INGRESS_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 512,
    "max_queued_requests": 256,
    "health_check_period_s": 10,
}
_MODEL_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 256,
    "max_queued_requests": 1024,
    "graceful_shutdown_timeout_s": 30,
    "health_check_period_s": 10,
}

_SHARD_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 256,
    "health_check_period_s": 10,
    "ray_actor_options": {"num_cpus": 0.5},
}

IngressDeployment = serve.deployment(name=INGRESS_DEPLOYMENT)(serve.ingress(api)(Ingress))
ModelServerDeployment = serve.deployment(name="ModelServer")(ModelServer)
CatalogShardDeployment = serve.deployment(name=SHARD_DEPLOYMENT)(CatalogShard)


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` and bind the ingress, one deployment per dedicated model version,
    and one per catalog shard when `search.shards` > 1."""
    config = AppArgs.model_validate(args)
    servers = {}
    for name, (model, version) in config.deployment_names().items():
        servers[name] = ModelServerDeployment.options(
            name=name,
            user_config=BatchLiveConfig().model_dump(),
            **_MODEL_DEFAULTS,
        ).bind(*model_server_args(config, model, version))
    args_json = config.model_dump(mode="json")
    shards = [
        CatalogShardDeployment.options(name=name, **_SHARD_DEFAULTS).bind(
            args_json, n, config.search.shards
        )
        for n, name in enumerate(config.shard_names())
    ]
    return IngressDeployment.options(**_INGRESS_DEFAULTS).bind(args_json, servers, shards)
