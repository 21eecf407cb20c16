"""The autoscaling policy of a dedicated version or catalog shard: Serve's own rule over
the calls its handles count and the direct calls its replicas hold (`direct`).

Serve's default policy scales a deployment to `total requests / target_ongoing_requests`
replicas, counting the requests its handles routed. Calls an Ingress makes directly
(`deployments/replicas/direct.py`) pass no handle, so each callee replica reports the
direct calls it holds as a metric of its own (`servekit_direct_calls`, sampled and
averaged over `look_back_period_s` as Serve does its own count), and this policy adds
them before the same rule. Serve applies the deployment's delays, factors and bounds
around it, as around its default.

This module is sent to Serve's controller by value (Serve pickles a policy with its
module), so it imports nothing of servekit's.
"""

from __future__ import annotations

from typing import Any

DIRECT_CALLS_METRIC = "servekit_direct_calls"


def policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas wanted: (handle-routed requests + direct calls) / target per replica."""
    replicas = ctx.current_num_replicas
    if replicas == 0:
        return ctx.target_num_replicas, {}
    direct = sum((ctx.aggregated_metrics or {}).get(DIRECT_CALLS_METRIC, {}).values())
    total = ctx.total_num_requests + direct
    return total / ctx.config.get_target_ongoing_requests(), {}
