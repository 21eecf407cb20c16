"""Builds a replica's recommendation service from the args: the recommender's loaded
versions, the search service's catalogs (which then keep each version's item vectors)
and the feature service; the event log for popular items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configs.schema import AppArgs
from deployments.observability.logs import get_logger
from deployments.pipelines.features import FeatureService
from deployments.pipelines.recommend import PopularItems, RecommendService
from deployments.pipelines.search import SearchService
from deployments.replicas.recommender_backend import RecommenderBackend


def open_recommend(
    args: AppArgs,
    backends: Mapping[tuple[str, str], Any],
    search: SearchService | None,
    features: FeatureService | None,
) -> RecommendService | None:
    """The service, or None without a recommender model; `backends`: every version's
    (the recommender's are taken). The search service's catalogs start keeping the
    recommender's spaces (the item tower's vectors)."""
    model = args.recommender()
    if model is None or search is None or features is None:
        return None
    log = get_logger("recommend")
    versions = {
        version: b.recommender
        for (name, version), b in backends.items()
        if name == model and isinstance(b, RecommenderBackend)
    }
    popular = PopularItems(
        features.events, args.recommendations, log, features.definitions.weights()
    )
    from deployments.observability.metrics import ModelMetrics, RecommendMetrics

    service = RecommendService(
        model, versions, search, features, popular, args.recommendations, RecommendMetrics()
    )
    # Each version loaded here is a live replica of it, as an inline embedding version
    # is: without the gauge, the version-without-replicas alert fired for every
    # recommender version with traffic, and the replicas panel left them out.
    service.replica_metrics = [ModelMetrics(model, version) for version in sorted(versions)]

    def vectors(space: str, items: list[Any]) -> Any:
        return service.item_vectors(space, items)

    search.item_model = (model, vectors)
    if args.recommendations.worker_process:
        from deployments.pipelines.recommend_process import RecommendWorker, WorkerPool
        from deployments.replicas.traffic import REPLICA_TRAFFIC

        # One caller at a time is answered here: the hand-over would only add latency.
        meter = features.meter
        workers = [
            RecommendWorker(
                args.model_dump_json(),
                log,
                here_when=REPLICA_TRAFFIC.sequential,
                store_failed=meter.store_failed if meter is not None else None,
            )
            for _ in range(args.recommendations.worker_processes)
        ]
        service.worker = workers[0] if len(workers) == 1 else WorkerPool(workers)
    return service
