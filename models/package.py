"""The servekit model package: one tar file per immutable model version.

A package holds the runtime's files (an ONNX graph, or safetensors weights and a
config) plus the tokenizer, and a `servekit-model.json` that says which runtime
loads it and what its signature is. Its sha256 is the version's identity.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ArtifactFormatError

META_FILE = "servekit-model.json"
FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20


class TensorSpec(BaseModel):
    """One named input or output of a model, in Open Inference Protocol terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tensor name as the inference protocol shows it.")
    datatype: Literal["BYTES", "FP32", "FP16", "INT64"] = Field(description="OIP datatype.")
    shape: tuple[int, ...] = Field(description="Shape; -1 marks a variable dimension.")


class PackageMeta(BaseModel):
    """What `servekit-model.json` says about a package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(FORMAT_VERSION, description="Package format version.")
    task: Literal["text-embedding", "recommendation"] = Field(
        description="What the model computes."
    )
    runtime: Literal["onnx", "torch"] = Field(description="The runtime that loads the package.")
    model_file: str = Field(description="Graph (onnx) or weights directory entry (torch).")
    tokenizer_file: str = Field("tokenizer.json", description="Fast tokenizer definition.")
    max_seq_length_tokens: int = Field(gt=0, description="Longer inputs are truncated to this.")
    embedding_dim: int = Field(gt=0, description="Length of each output vector.")
    inputs: tuple[TensorSpec, ...] = Field(description="Input signature.")
    outputs: tuple[TensorSpec, ...] = Field(description="Output signature.")
    source: str = Field("", description="Where the weights came from, for people.")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_package(src_dir: Path, meta: PackageMeta, out_file: Path) -> str:
    """Pack every file of `src_dir` plus the metadata into `out_file`; return its sha256.

    The tar is deterministic (sorted names, zero mtimes and owners), so packing the
    same files twice gives the same checksum.
    """
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            name = path.relative_to(src_dir).as_posix()
            if name == META_FILE:
                continue
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
        data = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo(META_FILE)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    tmp.replace(out_file)
    return sha256_file(out_file)


def unpack(archive: Path, dest: Path, uri: str) -> PackageMeta:
    """Extract a verified archive into `dest` and return its metadata.

    An archive that is not a readable tar is an `ArtifactFormatError`. An error of
    the file system (a full disk, an I/O error, a permission: an `OSError` with an
    errno) is raised as it is: the package is fine, the machine is not.
    """
    try:
        with tarfile.open(archive, "r") as tar:
            tar.extractall(dest, filter="data")
    except OSError as e:
        if e.errno is not None:
            raise
        # Errno-less OSErrors are a compressed stream's (gzip.BadGzipFile, bz2).
        raise ArtifactFormatError(uri, f"not a readable model package ({type(e).__name__})") from e
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise ArtifactFormatError(uri, f"not a readable model package ({type(e).__name__})") from e
    return read_meta(dest, uri)


def read_meta(package_dir: Path, uri: str) -> PackageMeta:
    """Read and validate `servekit-model.json` from an unpacked package."""
    meta_path = package_dir / META_FILE
    if not meta_path.is_file():
        raise ArtifactFormatError(uri, f"package has no {META_FILE}")
    try:
        meta = PackageMeta.model_validate_json(meta_path.read_bytes())
    except ValueError as e:
        raise ArtifactFormatError(uri, f"invalid {META_FILE}") from e
    if meta.format_version != FORMAT_VERSION:
        raise ArtifactFormatError(uri, f"package format {meta.format_version} is not supported")
    return meta
