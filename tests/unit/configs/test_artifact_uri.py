"""Artifact uris resolve the same whatever the case of their scheme."""

from __future__ import annotations

import pytest

from configs.settings import resolve_artifact_uri


@pytest.mark.parametrize("uri", ["s3://bucket/m/v1.tar", "S3://bucket/m/v1.tar"])
def test_an_s3_uri_stays_an_s3_uri(uri: str) -> None:
    assert resolve_artifact_uri(uri, "/srv/artifacts") == "s3://bucket/m/v1.tar"


@pytest.mark.parametrize("root", ["s3://bucket/store/", "S3://bucket/store", "s3://bucket/store"])
def test_a_relative_path_joins_an_s3_root(root: str) -> None:
    assert resolve_artifact_uri("m/v1.tar", root) == "s3://bucket/store/m/v1.tar"


def test_an_s3_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_ARTIFACT_ROOT", "S3://bucket/store")
    assert resolve_artifact_uri("m/v1.tar", None) == "s3://bucket/store/m/v1.tar"


def test_a_relative_path_joins_a_local_root() -> None:
    assert resolve_artifact_uri("m/v1.tar", "/srv/artifacts") == "/srv/artifacts/m/v1.tar"
