"""A recommender version in the ingress: loaded from its verified package, answering the
version contract (`metadata`, `ready`) so routing, canary and status treat it as any
version; its work is `deployments/pipelines/recommend.py`'s (no texts to embed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from configs.schema import AppArgs
from configs.settings import resolve_artifact_uri
from deployments.errors import BadRequest
from deployments.replicas.backend import EmbedResult
from models import ArtifactRef, ArtifactStore
from models.recommender import Recommender


class RecommenderBackend:
    """One loaded recommender version."""

    placement = "inline"

    def __init__(self, label: str, recommender: Recommender, meta: dict[str, Any]) -> None:
        self.label = label
        self.recommender = recommender
        self._meta = meta

    async def embed(self, texts: list[str], deadline: float) -> EmbedResult:
        """Not a text embedder: a 400 naming the route to call instead."""
        model = self.label.split("/", 1)[0]
        raise BadRequest(f"model: {model} is a recommender; call /v1/recommendations")

    async def metadata(self) -> dict[str, Any]:
        """The user tower's signature and the package's facts."""
        return self._meta

    async def ready(self) -> bool:
        """Loaded before the replica started."""
        return True

    def spare(self) -> bool:
        """Recommendation shadows are bounded by the shadower's cap per version."""
        return True


def load_recommenders(args: AppArgs) -> dict[tuple[str, str], RecommenderBackend]:
    """Resolve, verify and load every version of the recommender (none: empty)."""
    model = args.recommender()
    if model is None:
        return {}
    store = ArtifactStore(
        cache_dir=Path(args.artifact_cache_dir) if args.artifact_cache_dir else None
    )
    out = {}
    for version, spec in args.models[model].versions.items():
        uri = resolve_artifact_uri(spec.artifact.uri, args.artifact_root)
        resolved = store.resolve(ArtifactRef(uri=uri, sha256=spec.artifact.sha256))
        meta = resolved.meta
        if meta.task != "recommendation":
            raise ValueError(f"{model}/{version}: the artifact's task is {meta.task}")
        recommender = Recommender(resolved.path, max(1, spec.intra_op_threads))
        facts = {
            "runtime": meta.runtime,
            "device": "cpu",
            "task": meta.task,
            "inputs": [t.model_dump() for t in meta.inputs],
            "outputs": [t.model_dump() for t in meta.outputs],
            "embedding_dim": meta.embedding_dim,
        }
        out[(model, version)] = RecommenderBackend(f"{model}/{version}", recommender, facts)
    return out
