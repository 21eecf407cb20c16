"""The S3 path of the artifact store, against a real S3-compatible server on 127.0.0.1.

The server (moto's standalone server) runs in its own process; the store talks to it
over HTTP through boto3, configured only by the standard AWS environment variables.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models import (
    ArtifactChecksumError,
    ArtifactNotFoundError,
    ArtifactRef,
    ArtifactStore,
    ArtifactStoreUnreachableError,
    RuntimeOptions,
    load_model,
)
from tests.conftest import free_port, moto_server

BUCKET = "servekit-models"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server("S3") as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    # Only the standard AWS variables: the store reads nothing else.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-only")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture
def s3(aws_env: str) -> Any:
    from models.artifacts import make_s3_client

    client = make_s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


def test_upload_resolve_cache_hit_and_serve(
    s3: Any, manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    entry = manifest["v2"]
    s3.upload_file(str(example_store / entry["file"]), BUCKET, "minilm/v2.tar")
    ref = ArtifactRef(f"s3://{BUCKET}/minilm/v2.tar", entry["sha256"])
    store = ArtifactStore(tmp_path / "cache")

    resolved = store.resolve(ref)
    assert resolved.meta.runtime == "onnx"
    assert store.is_cached(ref)

    # Cache hit: the object is gone from the store, the replica still resolves it.
    s3.delete_object(Bucket=BUCKET, Key="minilm/v2.tar")
    again = store.resolve(ref)
    assert again.path == resolved.path

    runtime = load_model(ref, RuntimeOptions(), store=store)
    (vector,) = runtime.predict_batch(["served from an S3 artifact"])
    assert vector.shape == (384,)


def test_tampered_object_is_refused(
    s3: Any, manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    entry = manifest["v2"]
    tampered = tmp_path / "tampered.tar"
    shutil.copy(example_store / entry["file"], tampered)
    with tampered.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00tampered\x00")
    s3.upload_file(str(tampered), BUCKET, "minilm/v2-tampered.tar")
    uri = f"s3://{BUCKET}/minilm/v2-tampered.tar"
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactChecksumError) as info:
        ArtifactStore(cache).resolve(ArtifactRef(uri, entry["sha256"]))
    assert uri in str(info.value)
    assert not (cache / entry["sha256"]).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".partial")]


def test_missing_key_names_uri(s3: Any, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/minilm/does-not-exist.tar"
    with pytest.raises(ArtifactNotFoundError, match=r"does-not-exist\.tar"):
        ArtifactStore(tmp_path / "cache").resolve(ArtifactRef(uri, "b" * 64))


def test_missing_bucket_names_uri(s3: Any, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket/minilm/v1.tar"
    with pytest.raises(ArtifactNotFoundError, match="no-such-bucket"):
        ArtifactStore(tmp_path / "cache").resolve(ArtifactRef(uri, "b" * 64))


def test_unreachable_store_names_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-only")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = f"s3://{BUCKET}/minilm/v1.tar"
    with pytest.raises(ArtifactStoreUnreachableError, match="unreachable") as info:
        ArtifactStore(tmp_path / "cache").resolve(ArtifactRef(uri, "c" * 64))
    assert uri in str(info.value)
    assert "test-only" not in str(info.value)


class _FakeS3:
    """Records what the store asks of S3 and answers with one object's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[tuple[str, str]] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        import io

        self.asked.append((Bucket, Key))
        return {"Body": io.BytesIO(self.data)}


def test_an_upper_case_scheme_is_still_s3(tmp_path: Path) -> None:
    """`S3://` passes validation (schemes are case-insensitive), so it reads from S3 too,
    never as a local path."""
    import hashlib

    data = b"not a package, only bytes"
    ref = ArtifactRef("S3://bucket/m/snapshot.bin", hashlib.sha256(data).hexdigest())
    assert ref.is_s3
    client = _FakeS3(data)
    local = ArtifactStore(tmp_path / "cache", s3_client=client).fetch_file(ref)
    assert local.read_bytes() == data
    assert client.asked == [("bucket", "m/snapshot.bin")]
