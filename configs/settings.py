"""Settings read from the environment, and path resolution shared by the layers."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

# The project folder: where `serve_config.yaml` and the local `artifacts/` store live
# when servekit runs from a checkout or from the serving image.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def artifact_root(configured: str | None) -> Path:
    """Base folder for relative artifact uris: config, then env, then the project."""
    root = configured or os.environ.get("SERVEKIT_ARTIFACT_ROOT")
    return Path(root) if root else PROJECT_ROOT


def resolve_artifact_path(uri: str, configured_root: str | None) -> Path:
    """The local file a non-S3 artifact uri names."""
    parsed = urlparse(uri)
    path = Path(parsed.path) if parsed.scheme == "file" else Path(uri)
    return path if path.is_absolute() else artifact_root(configured_root) / path


def resolve_artifact_uri(uri: str, configured_root: str | None) -> str:
    """An absolute uri: S3 uris unchanged, local paths made absolute."""
    if uri.startswith("s3://"):
        return uri
    return str(resolve_artifact_path(uri, configured_root))
