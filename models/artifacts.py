"""Artifact references and the store that resolves them into a local, verified cache.

An artifact is a value: a `uri` (a local path, `file://...`, or `s3://bucket/key`)
and the `sha256` of its bytes. Resolving it downloads the bytes once per machine into
a cache directory, verifies the checksum, unpacks the model package and returns the
local directory. Nothing half-written ever becomes visible in the cache: downloads
and unpacking happen under temporary names and are renamed into place at the end.
A download killed midway leaves its temporary files behind; the next resolve on the
machine removes them (see `_remove_leftover_partials`).
The completion marker of an unpacked package records each file's size and sha256;
a cache hit checks them, so a cached file truncated or edited after the fact is
fetched again rather than served under the artifact's sha256.

S3 access uses boto3's standard configuration chain (environment, shared config,
instance/pod role); the endpoint may be overridden with `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`, as boto3 itself supports. Nothing about credentials lives here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from models.errors import (
    ArtifactChecksumError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStoreUnreachableError,
)
from models.package import PackageMeta, read_meta, sha256_file, unpack

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20
_COMPLETE_MARK = ".servekit-complete"
_PARTIAL = ".partial-"
_PARTIAL_SHA256 = re.compile(r"^\.partial-([0-9a-f]{64})-")
_LOCK_SHA256 = re.compile(r"^\.([0-9a-f]{64})\.lock$")
DEFAULT_CACHE_DIR = Path(
    os.environ.get("SERVEKIT_ARTIFACT_CACHE", Path.home() / ".cache" / "servekit" / "artifacts")
)


@dataclass(frozen=True)
class ArtifactRef:
    """An immutable model artifact: where its bytes are, and what they must hash to."""

    uri: str
    sha256: str

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        scheme = urlparse(self.uri).scheme
        if scheme not in ("", "file", "s3"):
            raise ValueError(f"uri scheme {scheme!r} is not supported (use a path or s3://)")
        if scheme == "s3":
            bucket, key = _split_s3(self.uri)
            if not bucket or not key:
                raise ValueError("s3 uri must look like s3://bucket/key")

    @property
    def is_s3(self) -> bool:
        """Whether the bytes live in S3 (or an S3-compatible store). The parsed scheme
        decides, as in validation: `S3://bucket/key` is an S3 uri too."""
        return urlparse(self.uri).scheme == "s3"


@dataclass(frozen=True)
class ResolvedArtifact:
    """A verified, unpacked artifact on local disk."""

    ref: ArtifactRef
    path: Path
    meta: PackageMeta


class ArtifactStore:
    """Resolves `ArtifactRef`s into a local cache directory, once per machine."""

    def __init__(self, cache_dir: Path | None = None, s3_client: Any | None = None) -> None:
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        self._s3_client = s3_client

    def resolve(self, ref: ArtifactRef) -> ResolvedArtifact:
        """Return the unpacked, checksum-verified package for `ref`, fetching it if needed.

        A cached package is used only when every file still has the size and sha256
        recorded when it was unpacked; otherwise it is fetched again.
        """
        final = self.cache_dir / ref.sha256
        self._remove_leftover_partials()
        if _package_problem(final) is None:
            return ResolvedArtifact(ref, final, read_meta(final, ref.uri))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(ref.sha256):
            # Another process may have finished (or repaired it) while we waited.
            problem = _package_problem(final)
            if problem is None:
                return ResolvedArtifact(ref, final, read_meta(final, ref.uri))
            if (final / _COMPLETE_MARK).is_file():
                log.warning("cached artifact %s: %s; fetching it again", ref.uri, problem)
            if final.exists():  # failed verification, or left incomplete by a crash
                shutil.rmtree(final)
            with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=_partial(ref)) as tmp:
                blob = Path(tmp) / "blob"
                self._download_verified(ref, blob)
                staged = Path(tmp) / "package"
                meta = unpack(blob, staged, ref.uri)
                record = {"uri": ref.uri, "files": _file_record(staged)}
                (staged / _COMPLETE_MARK).write_text(json.dumps(record, indent=1) + "\n")
                staged.rename(final)
        return ResolvedArtifact(ref, final, meta)

    def fetch_file(self, ref: ArtifactRef, suffix: str = "") -> Path:
        """Return a checksum-verified local copy of a single-file artifact (an index
        snapshot, not a model package), fetching it once per machine. A cached copy
        is hashed again before it is returned."""
        final = self.cache_dir / f"{ref.sha256}{suffix}"
        self._remove_leftover_partials()
        if _file_problem(final, ref.sha256) is None:
            return final
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(ref.sha256):
            problem = _file_problem(final, ref.sha256)
            if problem is None:
                return final
            if final.exists():
                log.warning("cached artifact %s: %s; fetching it again", ref.uri, problem)
                final.unlink()
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=_partial(ref))
            os.close(fd)
            try:
                self._download_verified(ref, Path(tmp))
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return final

    def is_cached(self, ref: ArtifactRef) -> bool:
        """Whether `ref` is already resolved in this cache (its files are not hashed
        here; `resolve` does that)."""
        return (self.cache_dir / ref.sha256 / _COMPLETE_MARK).is_file()

    @contextlib.contextmanager
    def _lock(self, sha256: str) -> Iterator[None]:
        with (self.cache_dir / f".{sha256}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _try_lock(self, sha256: str) -> Iterator[bool]:
        """Take `sha256`'s lock if no one holds it; say whether it was taken."""
        with (self.cache_dir / f".{sha256}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_leftover_partials(self) -> None:
        """Remove the temporary files of downloads that were killed midway.

        A download runs only while it holds its sha256's lock, under a `.partial-`
        name that carries the sha256: a partial listed while its lock is free belongs
        to no live download (the lock, held here while removing, keeps a new one from
        starting). A partial named by an earlier release carries no sha256, so it is
        removed only when no lock at all is held.
        """
        if not self.cache_dir.is_dir():
            return
        partials = sorted(self.cache_dir.glob(f"{_PARTIAL}*"))
        if not partials:
            return
        with contextlib.ExitStack() as held:
            taken: set[str] = set()

            def free(sha256: str) -> bool:
                if sha256 not in taken:
                    if not held.enter_context(self._try_lock(sha256)):
                        return False
                    taken.add(sha256)
                return True

            for path in partials:
                if match := _PARTIAL_SHA256.match(path.name):
                    owner_gone = free(match.group(1))
                else:
                    owner_gone = all(free(sha256) for sha256 in self._lock_names())
                if owner_gone:
                    log.info("artifact cache: removing %s, left by a download killed midway", path)
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def _lock_names(self) -> list[str]:
        return sorted(
            match.group(1)
            for path in self.cache_dir.glob(".*.lock")
            if (match := _LOCK_SHA256.match(path.name))
        )

    def _download_verified(self, ref: ArtifactRef, dest: Path) -> None:
        digest = hashlib.sha256()
        with dest.open("wb") as out:
            for chunk in self._stream(ref):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != ref.sha256:
            raise ArtifactChecksumError(
                ref.uri, f"checksum mismatch: expected sha256 {ref.sha256}, got {actual}"
            )

    def _stream(self, ref: ArtifactRef) -> Iterator[bytes]:
        if ref.is_s3:
            yield from self._stream_s3(ref)
        else:
            yield from _stream_local(ref)

    def _stream_s3(self, ref: ArtifactRef) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(ref.uri)
        try:
            body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
            while chunk := body.read(_CHUNK_BYTES):
                yield chunk
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
                raise ArtifactNotFoundError(ref.uri, f"not found in the store ({code})") from e
            raise ArtifactStoreUnreachableError(
                ref.uri, f"store refused the request ({code})"
            ) from e
        except BotoCoreError as e:
            raise ArtifactStoreUnreachableError(
                ref.uri, f"store unreachable ({type(e).__name__})"
            ) from e

    def _s3(self) -> Any:
        if self._s3_client is None:
            self._s3_client = make_s3_client()
        return self._s3_client


def _file_record(package: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of an unpacked package, by relative path."""
    return {
        name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for name, path in sorted(_package_files(package).items())
    }


def _package_files(package: Path) -> dict[str, Path]:
    return {
        name: path
        for path in package.rglob("*")
        if path.is_file() and (name := path.relative_to(package).as_posix()) != _COMPLETE_MARK
    }


def _package_problem(package: Path) -> str | None:
    """Why a cached package cannot be used as it is, or None when it is intact.

    Sizes are checked first (a stat per file), then every file is hashed again:
    about 0.1 s per 100 MB, once per replica start (see the README).
    """
    marker = package / _COMPLETE_MARK
    if not marker.is_file():
        return "not cached"
    try:
        record = json.loads(marker.read_text())["files"]
        expected = {name: (int(e["bytes"]), str(e["sha256"])) for name, e in record.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Markers written before files were recorded: nothing to verify against.
        return "no file record in its completion marker"
    try:
        files = _package_files(package)
        if set(files) != set(expected):
            return "its files differ from those unpacked"
        for name, (size, _) in expected.items():
            if (actual := files[name].stat().st_size) != size:
                return f"{name} is {actual} bytes, {size} were unpacked"
        for name, (_, digest) in expected.items():
            if sha256_file(files[name]) != digest:
                return f"{name} no longer has the sha256 it was unpacked with"
    except OSError as e:  # e.g. removed by another process repairing the entry
        return f"its files cannot be read ({type(e).__name__})"
    return None


def _file_problem(path: Path, sha256: str) -> str | None:
    """Why a cached single-file artifact cannot be used, or None when it verifies."""
    if not path.is_file():
        return "not cached"
    try:
        if sha256_file(path) != sha256:
            return "its bytes no longer hash to the declared sha256"
    except OSError as e:
        return f"it cannot be read ({type(e).__name__})"
    return None


def make_s3_client() -> Any:
    """An S3 client from the standard AWS configuration chain, with bounded timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", config=config)


def _partial(ref: ArtifactRef) -> str:
    """The prefix of a download's temporary name; it says whose lock guards it."""
    return f"{_PARTIAL}{ref.sha256}-"


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> Path:
    """The filesystem path a local uri names (`file://` or a plain path)."""
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme == "file" else Path(uri)


def _stream_local(ref: ArtifactRef) -> Iterator[bytes]:
    path = local_path(ref.uri)
    handle: IO[bytes]
    try:
        handle = path.open("rb")
    except FileNotFoundError as e:
        raise ArtifactNotFoundError(ref.uri, "no such file") from e
    except OSError as e:
        raise ArtifactError(ref.uri, f"cannot be read ({type(e).__name__})") from e
    with handle:
        while chunk := handle.read(_CHUNK_BYTES):
            yield chunk
