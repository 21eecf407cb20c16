"""Errors raised by the models layer.

They carry no HTTP status: this layer knows nothing of HTTP. The ingress maps them
to statuses in one place. Every artifact error names the uri it is about and never
carries credentials or file contents.
"""

from __future__ import annotations


class ModelLayerError(Exception):
    """Base class of every error raised by `models`."""


class ArtifactError(ModelLayerError):
    """An artifact could not be resolved into a verified local copy."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"artifact {uri}: {reason}")
        self.uri = uri
        self.reason = reason


class ArtifactNotFoundError(ArtifactError):
    """The uri names nothing: no such file, bucket or key."""


class ArtifactChecksumError(ArtifactError):
    """The bytes behind the uri do not hash to the declared sha256."""


class ArtifactStoreUnreachableError(ArtifactError):
    """The store could not be reached or refused access (network, DNS, credentials)."""


class ArtifactFormatError(ArtifactError):
    """The artifact is not a servekit model package, or its metadata is invalid."""


class RuntimeNotReadyError(ModelLayerError):
    """`predict_batch` was called before `load()` finished."""


class BatchContractError(ModelLayerError):
    """A runtime returned a number of outputs different from its number of inputs."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"runtime returned {got} outputs for {expected} inputs")
        self.expected = expected
        self.got = got


class InvalidInputError(ModelLayerError):
    """An input does not fit the model's signature (wrong type, empty batch)."""
