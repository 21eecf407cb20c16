"""Catalog snapshots: a catalog's items with a ready vector index per embedding space,
in one file, built offline and shipped as an artifact (uri + sha256) like a model.

A replica that starts with a snapshot loads the vector graph instead of building it
(50,000 inserts per version) and reads no vectors from the store; a catalog that does
not exist yet in the store is seeded from it (items, their changes and vectors, in one
transaction). Either way the store stays the source of truth: the replica then replays
the change log, applies what differs and drops what the store no longer has.

The file is an npz (no pickles): `meta` (JSON: format, item count, per space the sha256
of the model artifact that embedded it, the hash of the embedded texts), `items` (JSON
lines: id, text, attributes, in slot order) and one `space_<n>` per space, a
`VectorIndex` whose keys are the items' positions.

Each space records the sha256 of the model artifact that made its vectors: a replica
uses a space only when the configured version has that very artifact, since a version
name is not proof of the same weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np
import numpy.typing as npt

from models.ann import VectorIndex
from models.cpus import usable_cpus
from models.errors import ArtifactFormatError
from stores.catalog import Item, item_text

FORMAT = "servekit-catalog-snapshot"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotSpace:
    """One embedding space of a snapshot: its vectors, by item position."""

    model_sha256: str  # the model artifact that embedded the items
    index: VectorIndex


@dataclass(frozen=True)
class CatalogSnapshot:
    """A catalog's items (in slot order) and its ready vector indexes."""

    items: list[Item]
    spaces: dict[str, SnapshotSpace]  # "model/version" -> vectors
    texts_sha256: str

    def vectors_bytes(self, space: str) -> dict[str, bytes]:
        """Float32 bytes of every item's vector in `space`, by item id (to seed a store)."""
        matrix = self.spaces[space].index.vectors(np.arange(len(self.items), dtype=np.uint64))
        return {item.id: matrix[n].tobytes() for n, item in enumerate(self.items)}


def texts_hash(items: Sequence[Item]) -> str:
    """sha256 of what is embedded: each item's id and text, in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\x00{item_text(item)}\x01".encode())
    return digest.hexdigest()


def write_snapshot(
    path: Path,
    items: Sequence[Item],
    spaces: Mapping[str, tuple[str, npt.NDArray[np.float32]]],
    threads: int = 0,
) -> str:
    """Write a snapshot of `items` with, per space, (model artifact sha256, vectors in
    item order); atomically. Returns the file's sha256 (its artifact reference). `threads`
    builds each index (0: the CPUs this process may use, within its CPU limit)."""
    if not items:
        raise ValueError("a snapshot holds at least one item")
    if len({item.id for item in items}) != len(items):
        raise ValueError("item ids repeat")
    keys = np.arange(len(items), dtype=np.uint64)
    fields: dict[str, npt.NDArray[Any]] = {}
    meta: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "items": len(items)}
    meta["texts_sha256"] = texts_hash(items)
    meta["spaces"] = {}
    for n, (space, (model_sha, vectors)) in enumerate(sorted(spaces.items())):
        if len(vectors) != len(items):
            raise ValueError(f"{space}: {len(vectors)} vectors for {len(items)} items")
        index = VectorIndex(vectors.shape[1])
        index.upsert(keys, vectors, threads=threads or usable_cpus())
        fields[f"space_{n}"] = np.frombuffer(index.to_bytes(), dtype=np.uint8)
        meta["spaces"][space] = {"model_sha256": model_sha, "field": f"space_{n}"}
    lines = "".join(
        json.dumps({"id": i.id, "text": i.text, "attributes": i.attributes}) + "\n" for i in items
    )
    fields["items"] = np.frombuffer(lines.encode(), dtype=np.uint8)
    fields["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as out:
        np.savez(out, allow_pickle=False, **fields)
    partial.replace(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_snapshot(path: Path) -> CatalogSnapshot:
    """Load a snapshot written by `write_snapshot`; `ArtifactFormatError` when the file
    is not one (its checksum is the artifact store's to verify, before this)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected {FORMAT} version {FORMAT_VERSION}")
            items = [
                Item(row["id"], row["text"], row["attributes"])
                for row in map(json.loads, data["items"].tobytes().decode().splitlines())
            ]
            if len(items) != meta["items"]:
                raise ValueError(f"{len(items)} items, the header says {meta['items']}")
            spaces = {
                space: SnapshotSpace(
                    info["model_sha256"],
                    VectorIndex.load(io.BytesIO(data[info["field"]].tobytes())),
                )
                for space, info in meta["spaces"].items()
            }
    except (ValueError, KeyError, TypeError, BadZipFile, UnicodeDecodeError) as e:
        raise ArtifactFormatError(str(path), f"not a catalog snapshot: {e}") from e
    for space, vectors in spaces.items():
        if len(vectors.index) != len(items):
            raise ArtifactFormatError(str(path), f"{space}: vectors for some items only")
    return CatalogSnapshot(items, spaces, meta["texts_sha256"])
