"""Local artifact store: resolve once, verify, never leave half-written files."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import (
    ArtifactChecksumError,
    ArtifactFormatError,
    ArtifactNotFoundError,
    ArtifactRef,
    ArtifactStore,
)
from models.package import PackageMeta, TensorSpec, sha256_file, write_package


def _meta() -> PackageMeta:
    return PackageMeta(
        task="text-embedding",
        runtime="onnx",
        model_file="model.onnx",
        max_seq_length_tokens=8,
        embedding_dim=4,
        inputs=(TensorSpec(name="text", datatype="BYTES", shape=(-1,)),),
        outputs=(TensorSpec(name="embedding", datatype="FP32", shape=(-1, 4)),),
    )


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"graph bytes")
    (src / "tokenizer.json").write_text("{}")
    out = tmp_path / "store" / "m" / "v1.tar"
    return out, write_package(src, _meta(), out)


def _partials(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.name.startswith(".partial")] if cache.exists() else []


def test_resolve_unpacks_and_verifies(package: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = package
    store = ArtifactStore(tmp_path / "cache")
    resolved = store.resolve(ArtifactRef(str(path), digest))
    assert (resolved.path / "model.onnx").read_bytes() == b"graph bytes"
    assert resolved.meta.embedding_dim == 4
    assert store.is_cached(ArtifactRef(str(path), digest))


def test_file_uri_scheme_is_accepted(package: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = package
    resolved = ArtifactStore(tmp_path / "cache").resolve(ArtifactRef(f"file://{path}", digest))
    assert resolved.meta.runtime == "onnx"


def test_cache_hit_does_not_read_the_source_again(
    package: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = package
    store = ArtifactStore(tmp_path / "cache")
    first = store.resolve(ArtifactRef(str(path), digest))
    path.unlink()  # the source is gone; the cache alone must answer
    second = store.resolve(ArtifactRef(str(path), digest))
    assert first.path == second.path


def test_packing_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"x" * 1000)
    one = write_package(src, _meta(), tmp_path / "1.tar")
    two = write_package(src, _meta(), tmp_path / "2.tar")
    assert one == two == sha256_file(tmp_path / "1.tar")


def test_checksum_mismatch_names_uri_and_leaves_nothing(
    package: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = package
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ArtifactChecksumError) as info:
        ArtifactStore(cache).resolve(ArtifactRef(str(path), wrong))
    assert str(path) in str(info.value)
    assert "checksum mismatch" in str(info.value)
    assert not (cache / wrong).exists()
    assert _partials(cache) == []


def test_missing_file_names_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "nope.tar")
    with pytest.raises(ArtifactNotFoundError, match=r"nope\.tar"):
        ArtifactStore(tmp_path / "cache").resolve(ArtifactRef(uri, "a" * 64))
    assert _partials(tmp_path / "cache") == []


def test_not_a_package_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "junk.tar"
    blob.write_bytes(b"not a tar at all")
    ref = ArtifactRef(str(blob), sha256_file(blob))
    with pytest.raises(ArtifactFormatError, match=r"junk\.tar"):
        ArtifactStore(tmp_path / "cache").resolve(ref)
    assert not (tmp_path / "cache" / ref.sha256).exists()


@pytest.mark.parametrize(
    ("uri", "sha", "message"),
    [
        ("a.tar", "abc", "64 lowercase hex"),
        ("a.tar", "A" * 64, "64 lowercase hex"),
        ("http://x/a.tar", "a" * 64, "scheme 'http'"),
        ("s3://bucket-only", "a" * 64, "s3://bucket/key"),
    ],
)
def test_invalid_refs_are_refused(uri: str, sha: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArtifactRef(uri, sha)


def _cached_model(store: ArtifactStore, ref: ArtifactRef) -> Path:
    return store.cache_dir / ref.sha256 / "model.onnx"


def test_truncated_cached_file_is_fetched_again(
    package: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    store.resolve(ref)
    _cached_model(store, ref).write_bytes(b"graph")  # truncated after the fact
    resolved = store.resolve(ref)
    assert (resolved.path / "model.onnx").read_bytes() == b"graph bytes"
    assert "model.onnx is 5 bytes, 11 were unpacked" in caplog.text
    assert _partials(tmp_path / "cache") == []


def test_edited_cached_file_of_the_same_size_is_fetched_again(
    package: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    store.resolve(ref)
    _cached_model(store, ref).write_bytes(b"graph BYTES")
    assert (store.resolve(ref).path / "model.onnx").read_bytes() == b"graph bytes"
    assert "model.onnx no longer has the sha256" in caplog.text


def test_added_cached_file_is_fetched_again(package: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    store.resolve(ref)
    (store.cache_dir / ref.sha256 / "extra.onnx").write_bytes(b"x")
    assert not (store.resolve(ref).path / "extra.onnx").exists()


def test_corrupt_cache_entry_is_removed_even_when_the_source_is_gone(
    package: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    store.resolve(ref)
    _cached_model(store, ref).write_bytes(b"")
    path.unlink()
    with pytest.raises(ArtifactNotFoundError):
        store.resolve(ref)
    assert not (store.cache_dir / ref.sha256).exists()


def test_marker_without_file_record_is_fetched_again_once(
    package: tuple[Path, str], tmp_path: Path
) -> None:
    """A cache entry completed before files were recorded is unverified: fetched once,
    then verified like any other."""
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    store.resolve(ref)
    (store.cache_dir / ref.sha256 / ".servekit-complete").write_text(str(path) + "\n")
    _cached_model(store, ref).write_bytes(b"graph BYTES")  # undetectable without a record
    assert (store.resolve(ref).path / "model.onnx").read_bytes() == b"graph bytes"
    path.unlink()  # from now on the cache alone answers
    assert (store.resolve(ref).path / "model.onnx").read_bytes() == b"graph bytes"


def test_corrupt_cached_single_file_is_fetched_again(
    package: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, digest = package
    ref = ArtifactRef(str(path), digest)
    store = ArtifactStore(tmp_path / "cache")
    local = store.fetch_file(ref, ".snapshot")
    local.write_bytes(local.read_bytes()[:1000])
    assert sha256_file(store.fetch_file(ref, ".snapshot")) == digest
    assert "no longer hash to the declared sha256" in caplog.text


def _killed_download(cache: Path, name: str) -> Path:
    """What a download killed midway leaves: a temporary folder with part of a blob."""
    partial = cache / name
    partial.mkdir(parents=True)
    (partial / "blob").write_bytes(b"half a package")
    return partial


def test_leftovers_of_a_killed_download_are_removed(
    package: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = package
    cache = tmp_path / "cache"
    mine = _killed_download(cache, f".partial-{digest}-k1ll3d00")
    other = _killed_download(cache, f".partial-{'e' * 64}-k1ll3d00")
    earlier_release = _killed_download(cache, ".partial-x7yz_0ab")
    ArtifactStore(cache).resolve(ArtifactRef(str(path), digest))
    assert [p for p in (mine, other, earlier_release) if p.exists()] == []


def test_a_live_download_is_left_alone(package: tuple[Path, str], tmp_path: Path) -> None:
    """A partial whose lock another process holds is a download in progress."""
    import fcntl

    path, digest = package
    cache = tmp_path / "cache"
    live = _killed_download(cache, f".partial-{'e' * 64}-l1ve0000")
    earlier_release = _killed_download(cache, ".partial-x7yz_0ab")
    with (cache / f".{'e' * 64}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as that download's process does
        store = ArtifactStore(cache)
        store.resolve(ArtifactRef(str(path), digest))
        store.fetch_file(ArtifactRef(str(path), digest), ".snapshot")
        assert live.exists()
        # Its sha256 unknown, it may be the live download's: kept while any lock is held.
        assert earlier_release.exists()
    store.fetch_file(ArtifactRef(str(path), digest), ".snapshot")
    assert _partials(cache) == []


def test_a_full_disk_is_not_called_a_bad_package(
    package: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while unpacking is the machine's problem, raised as what it is."""
    import errno
    import tarfile

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full_disk)
    path, digest = package
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="No space left on device") as info:
        ArtifactStore(cache).resolve(ArtifactRef(str(path), digest))
    assert info.value.errno == errno.ENOSPC
    assert _partials(cache) == []
    assert not (cache / digest).exists()


@pytest.mark.parametrize("mode", ["w:gz", "w:xz"])
def test_a_truncated_compressed_archive_is_not_a_package(mode: str, tmp_path: Path) -> None:
    import io
    import os
    import tarfile

    blob = tmp_path / "cut.tar"
    with tarfile.open(blob, mode) as tar:
        data = os.urandom(100_000)
        info = tarfile.TarInfo("model.onnx")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob.write_bytes(blob.read_bytes()[:50_000])
    ref = ArtifactRef(str(blob), sha256_file(blob))
    with pytest.raises(ArtifactFormatError, match=r"cut\.tar: not a readable model package"):
        ArtifactStore(tmp_path / "cache").resolve(ref)
