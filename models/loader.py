"""Pick and load the runtime a resolved package asks for."""

from __future__ import annotations

from models.artifacts import ArtifactRef, ArtifactStore, ResolvedArtifact
from models.runtime import Runtime, RuntimeOptions


def runtime_for(artifact: ResolvedArtifact, options: RuntimeOptions) -> Runtime:
    """Build (not load) the runtime named by the package's metadata; a package of
    another task (a recommender's) is refused by name, before any file is read."""
    if artifact.meta.task != "text-embedding":
        raise ValueError(
            f"{artifact.ref.uri}: the package's task is {artifact.meta.task}, not "
            "text-embedding (a recommender's package belongs under a recommendation model)"
        )
    if artifact.meta.runtime == "onnx":
        from models.onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(artifact.path, artifact.meta, options)
    from models.torch_runtime import TorchEmbedder

    return TorchEmbedder(artifact.path, artifact.meta, options)


def load_model(
    ref: ArtifactRef, options: RuntimeOptions, store: ArtifactStore | None = None
) -> Runtime:
    """Resolve an artifact, build its runtime and load it; ready to predict."""
    artifact = (store or ArtifactStore()).resolve(ref)
    runtime = runtime_for(artifact, options)
    runtime.load()
    return runtime
