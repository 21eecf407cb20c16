"""servekit's models layer: artifacts, the runtime contract and its runtimes.

Nothing here imports Ray or speaks HTTP; heavy libraries (torch, onnxruntime) are
imported inside the runtime that needs them.
"""

from models.artifacts import ArtifactRef, ArtifactStore, ResolvedArtifact
from models.errors import (
    ArtifactChecksumError,
    ArtifactError,
    ArtifactFormatError,
    ArtifactNotFoundError,
    ArtifactStoreUnreachableError,
    BatchContractError,
    InvalidInputError,
    ModelLayerError,
    RuntimeNotReadyError,
)
from models.loader import load_model, runtime_for
from models.runtime import Runtime, RuntimeOptions

__all__ = [
    "ArtifactChecksumError",
    "ArtifactError",
    "ArtifactFormatError",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactStoreUnreachableError",
    "BatchContractError",
    "InvalidInputError",
    "ModelLayerError",
    "ResolvedArtifact",
    "Runtime",
    "RuntimeNotReadyError",
    "RuntimeOptions",
    "load_model",
    "runtime_for",
]
SERVEKIT_PACKAGE = "models"
