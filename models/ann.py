"""The vector index behind semantic search: one per (tenant, catalog, model version),
kept current as items are upserted and removed, searched with attribute filters.

Why usearch, with an int8 graph and float32 rescoring. bench/ann.py on this project's
2-core machine: 100,000 clustered 384-d unit vectors (synthetic: 1,000 Gaussian
clusters around 50 topics), 1,000 queries, HNSW M 16 / construction expansion 128 for
all, search expansion the smallest reaching recall@10 >= 0.95 against exact search;
latency is one query at a time on one thread; size is the serialized index.

    index                    build  ef  recall  p50 us  p99 us     MB  add us  remove us
    usearch f32               23 s  32   0.967     253     524  168.5     560        1.5
    usearch f16               16 s  32   0.960     180     324   91.7     410        2.6
    usearch i8 (alone)         6 s 256   0.883     281     568   53.3     211        1.4
    hnswlib                   11 s  48   0.976     170     326  168.4     366  tombstone
    faiss IndexHNSWFlat       15 s  24   0.954     100     205  168.0     591       none
    VectorIndex (i8 graph)    10 s  32   0.963     177     335  207.8     537         17

Latencies move by a third between runs on this shared machine: over four runs the p50
was 86-124 us for faiss, 114-170 for hnswlib, 136-177 for VectorIndex (256 once, with
the machine busy).

- faiss's HNSW cannot remove an item at all (`remove_ids` is not implemented for it),
  so it cannot follow a catalog's deletes. hnswlib deletes only mark tombstones, its
  capacity is fixed up front, and it stores float32 only: a second float32 copy next
  to the matrix below (322 MB at 100k instead of 208).
- usearch removes for real and reuses the space, serializes to a buffer, and stores
  the graph's vectors as int8: a third of float32's size, its fastest build, and a
  faster walk than f16 or f32 at the same expansion. int8 alone tops out at 0.88
  recall (quantized scores tie); rescoring the walk's candidates with the float32 rows
  lifts it to 0.963 at ef 32 (an f16 graph, in another run: 0.958, 294 us, 246 MB),
  and every score returned is the exact cosine similarity.
- The default search expansion is 48 (recall 0.98 on these data), a margin for real
  embeddings; set `expansion_search` per index. The tenth of a millisecond between
  the libraries is small next to embedding the query, which takes milliseconds.

Filters. `allowed` is a boolean mask indexed by key: one gather over the slots turns it
into a per-slot mask (~0.1 ms at 100k), whatever its selectivity, and attribute
postings combine as numpy `&`/`|`. Keys may use all 64 bits, but only keys below the
mask's length can be allowed: number catalog items densely to filter them.

Two strategies, measured at 100k (ms, p50/p99, recall against exact search over the
allowed items; "category" filters allow whole clusters, often far from the query):

    filter     allowed   exact scan        graph + post-filter      chosen (auto)
    random  1%   1,020   0.37/0.67  1.000   28.0/47.1   0.844   0.22/1.07  1.000
    random  2%   2,012   0.41/0.59  1.000    1.5/2.5    0.975   0.39/0.78  1.000
    random  5%   5,038   1.82/2.58  1.000    0.7/1.3    0.984   1.12/1.70  0.983
    random 10%   9,993   3.89/7.12  1.000    0.6/1.2    0.981   0.49/0.87  0.981
    random 50%  50,012   10.8/21.3  1.000    0.3/0.6    0.975   0.37/0.62  0.975
    categ.  1%   1,099   0.23/0.40  1.000   16.4/34.3   0.816   0.24/0.46  1.000
    categ.  5%   5,012   1.66/2.82  1.000    2.6/14.0   0.910   2.81/5.08  0.990
    categ. 10%  10,007   4.17/5.76  1.000    1.5/16.0   0.957   3.44/6.34  0.984
    categ. 50%  50,021   10.2/18.4  1.000    0.5/5.6    0.964   0.78/16.7  0.967

- Exact: a gather of the allowed float32 rows and a matrix-vector product, chunked;
  past a fifth of the slots, one product over every row instead (8 ms for all 100k
  rows against 21 ms to gather half of them).
- Graph: ask for `oversample * k / fraction` candidates (at least the expansion),
  keep the allowed ones, ask 4x more while fewer than k are allowed, up to
  `max_candidates` (512); still short (a filter far from the query), go exact. Walks
  past ~500 candidates cost more than an exact scan of a few thousand rows (0.6 ms at
  512, 2 ms at 2,048, 5.7 ms at 4,096) and lose recall (0.84 at 1%).
- Chosen: exact when at most `exact_max_items` (4,096, ~4% of 100k, where the two
  cross) are allowed, or when the first walk would need more than `max_candidates`;
  the graph otherwise. Either way, k results come back whenever k allowed keys exist.

Thread safety: any number of threads may search while one thread writes (upsert,
remove, save; concurrent writers queue on a lock). A replaced key gets a new slot;
writers fill rows and graph nodes that no search can see yet, then publish them, flip
replaced and removed slots dead and swap grown arrays under a short exclusive section
of a readers-writer lock that each search holds shared. Slots leave the graph only
once dead, so a row a search may read is never rewritten. usearch runs one call at a
time: its Python binding releases the GIL, and one-thread calls from different threads
may share its per-thread search context. Graph inserts go in chunks of `WRITE_CHUNK`
items, so a search waits for at most one chunk.

Snapshots: `save` writes one npz file (settings, the usearch graph in its own format,
keys, live flags, float32 rows, free slots); `load` restores it so that every search
answers identically.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal
from zipfile import BadZipFile

import numpy as np
import numpy.typing as npt

from models.errors import ArtifactFormatError, InvalidInputError

Keys = npt.NDArray[np.uint64]
Vectors = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Slots = npt.NDArray[np.int64]
Dtype = Literal["f32", "f16", "i8"]

FORMAT = "servekit-vector-index"
FORMAT_VERSION = 1
# Items per write step: a search waits for at most one step of graph inserts.
WRITE_CHUNK = 64
# Rows scored at once by exact search, so a wide filter never gathers the whole matrix.
EXACT_CHUNK = 16_384
# Exact search over more than 1/this of the slots scores every row instead of gathering
# the allowed ones (100k x 384 on 2 cores: 8 ms for all rows, 21 ms to gather half).
FULL_SCAN_RATIO = 5
_MIN_CAPACITY = 1_024


class _ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers, so a steady
    stream of searches cannot starve the (short) publish step of a write."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the duration of the block."""
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the duration of the block."""
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class _Arrays:
    """Per-slot storage, replaced as a whole when it grows."""

    vectors: Vectors  # (capacity, dim), normalized rows
    keys: Keys  # (capacity,)
    live: Mask  # (capacity,): the slot holds the current vector of its key

    @classmethod
    def empty(cls, capacity: int, dim: int) -> _Arrays:
        return cls(
            np.zeros((capacity, dim), np.float32),
            np.zeros(capacity, np.uint64),
            np.zeros(capacity, np.bool_),
        )

    def grown(self, capacity: int, used: int) -> _Arrays:
        bigger = _Arrays.empty(capacity, self.vectors.shape[1])
        bigger.vectors[:used] = self.vectors[:used]
        bigger.keys[:used] = self.keys[:used]
        bigger.live[:used] = self.live[:used]
        return bigger


def _usearch_index(dim: int, dtype: Dtype, connectivity: int, expansion_add: int) -> Any:
    # With usearch's extension loaded first, a later `import onnxruntime` crashes the
    # process (usearch 2.26, onnxruntime 1.32: a replica or a test that builds an index
    # before it loads a model); the other order is fine, so ONNX Runtime goes first.
    with suppress(ImportError):
        import onnxruntime  # noqa: F401
    from usearch.index import Index

    return Index(
        ndim=dim,
        metric="ip",  # rows are normalized, so inner product is cosine
        dtype=dtype,
        connectivity=connectivity,
        expansion_add=expansion_add,
    )


def _normalized(vectors: npt.ArrayLike, dim: int, what: str) -> Vectors:
    """Rows as contiguous float32 of unit length; refuses wrong shapes, NaN and zeros."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidInputError(f"{what}: expected shape (n, {dim}), got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidInputError(f"{what}: every vector must be finite and non-zero")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def _top(scores: Scores, k: int) -> npt.NDArray[np.intp]:
    """Positions of the `k` highest scores, best first."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


class VectorIndex:
    """An HNSW index (usearch) over normalized vectors, with uint64 keys.

    Every vector also lives in a float32 matrix by slot: filtered searches over few
    items scan it exactly, and ANN candidates are rescored from it, so returned scores
    are exact cosine similarities whatever the graph's storage type.
    """

    def __init__(
        self,
        dim: int,
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 48,
        dtype: Dtype = "i8",
        exact_max_items: int = 4_096,
        oversample: float = 2.0,
        max_candidates: int = 512,
    ) -> None:
        """`exact_max_items`: a filter allowing at most this many items is searched
        exactly. `oversample`: ANN candidates asked per wanted result, divided by the
        allowed fraction. `max_candidates`: beyond this many the filter is searched
        exactly, which is cheaper than a graph walk that long."""
        if dim < 1 or connectivity < 2 or expansion_add < 1:
            raise ValueError("dim and expansion_add must be >= 1, connectivity >= 2")
        if exact_max_items < 0 or oversample < 1 or max_candidates < 1:
            raise ValueError("exact_max_items >= 0, oversample >= 1, max_candidates >= 1")
        self.dim = dim
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.dtype: Dtype = dtype
        self.exact_max_items = exact_max_items
        self.oversample = oversample
        self.max_candidates = max_candidates
        self._graph = _usearch_index(dim, dtype, connectivity, expansion_add)
        self._graph_lock = threading.Lock()  # usearch: one call at a time
        self.expansion_search = expansion_search
        self._arrays = _Arrays.empty(_MIN_CAPACITY, dim)
        self._used = 0  # slots below this were handed out at least once
        self._count = 0
        self._max_key = -1  # the largest key ever published: decides `_slot_mask`'s path
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._rw = _ReadWriteLock()  # arrays and the live flags: searches vs publish
        self._writer = threading.Lock()  # one writer at a time

    @property
    def expansion_search(self) -> int:
        """The graph walk's breadth (HNSW's ef) for an unfiltered search."""
        return self._expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if value < 1:
            raise ValueError("expansion_search must be >= 1")
        with self._graph_lock:
            self._expansion_search = value
            self._graph.expansion_search = value

    def __len__(self) -> int:
        """Number of keys in the index."""
        return self._count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int | np.integer) and int(key) in self._slot_of

    # -- writes ---------------------------------------------------------------------

    def upsert(self, keys: npt.ArrayLike, vectors: npt.ArrayLike, *, threads: int = 1) -> None:
        """Insert or replace the vectors of `keys` (uint64; on a repeated key in one
        call the last vector wins). `threads` > 1 speeds up bulk loads."""
        keys_u64 = np.asarray(keys, dtype=np.uint64).reshape(-1)
        rows = _normalized(vectors, self.dim, "vectors")
        if len(keys_u64) != len(rows):
            raise InvalidInputError(f"{len(keys_u64)} keys for {len(rows)} vectors")
        # keep the last occurrence of each key, in the original order
        _, last = np.unique(keys_u64[::-1], return_index=True)
        keep = np.sort(len(keys_u64) - 1 - last)
        keys_u64, rows = keys_u64[keep], rows[keep]
        step = WRITE_CHUNK * max(1, threads)
        with self._writer:
            for start in range(0, len(keys_u64), step):
                end = start + step
                self._upsert_chunk(keys_u64[start:end], rows[start:end], threads)

    def _upsert_chunk(self, keys: Keys, rows: Vectors, threads: int) -> None:
        # A replaced key gets a fresh slot and its old slot is retired only after the new
        # one is published: a row a search may be reading is never overwritten.
        slots = self._allocate(len(keys))
        arrays = self._arrays
        arrays.vectors[slots] = rows
        arrays.keys[slots] = keys
        self._max_key = max(self._max_key, int(keys.max()))  # before they are published
        with self._graph_lock:
            self._graph.add(slots.astype(np.uint64), rows, threads=threads)
        old = [self._slot_of[k] for k in keys.tolist() if k in self._slot_of]
        with self._rw.write():
            arrays.live[slots] = True
            arrays.live[old] = False
            self._count += len(slots) - len(old)
        self._slot_of.update(zip(keys.tolist(), slots.tolist(), strict=True))
        self._retire(old)

    def remove(self, keys: npt.ArrayLike) -> int:
        """Remove `keys`; unknown keys are ignored. Returns how many were removed."""
        wanted = np.asarray(keys, dtype=np.uint64).reshape(-1).tolist()
        with self._writer:
            old = [self._slot_of.pop(k) for k in dict.fromkeys(wanted) if k in self._slot_of]
            with self._rw.write():
                self._arrays.live[old] = False
                self._count -= len(old)
            self._retire(old)
        return len(old)

    def _retire(self, slots: list[int]) -> None:
        """Drop published-dead slots from the graph and make them reusable."""
        if not slots:
            return
        with self._graph_lock:
            self._graph.remove(np.asarray(slots, np.uint64))
        self._free.extend(slots)

    def _allocate(self, n: int) -> Slots:
        """`n` slots that are neither live nor in the graph: reused ones first."""
        reused = self._free[len(self._free) - min(n, len(self._free)) :]
        del self._free[len(self._free) - len(reused) :]
        fresh = n - len(reused)
        capacity = len(self._arrays.live)
        if self._used + fresh > capacity:
            bigger = self._arrays.grown(max(2 * capacity, self._used + fresh), self._used)
            with self._rw.write():
                self._arrays = bigger
        new = np.arange(self._used, self._used + fresh, dtype=np.int64)
        self._used += fresh
        return np.concatenate([np.asarray(reused, np.int64), new])

    # -- search ---------------------------------------------------------------------

    def search(
        self, query: npt.ArrayLike, k: int, allowed: Mask | None = None
    ) -> tuple[Keys, Scores]:
        """The at most `k` keys most similar to `query`, best first, with their cosine
        similarities. `allowed`: a boolean mask indexed by key (keys at or past its end
        are not allowed); when at least `k` allowed keys exist, `k` results come back."""
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        q = self._unit_query(query)
        if allowed is not None and (allowed.dtype != np.bool_ or allowed.ndim != 1):
            raise InvalidInputError("allowed must be a one-dimensional boolean mask")
        with self._rw.read():
            arrays, used = self._arrays, self._used
            mask = self._slot_mask(arrays, used, allowed)
            n_allowed = self._count if allowed is None else int(np.count_nonzero(mask))
            if n_allowed == 0:
                return np.empty(0, np.uint64), np.empty(0, np.float32)
            slots = None
            if not self._exact_is_cheaper(k, n_allowed):
                slots = self._ann(q, k, mask, n_allowed)
            if slots is not None:
                best, scores = self._rank(arrays.vectors, slots, q, k)
            else:  # exact by choice, or the graph walk came back short
                best, scores = self._exact(arrays.vectors, mask, n_allowed, q, k)
            return arrays.keys[best], scores

    def _unit_query(self, query: npt.ArrayLike) -> Vectors:
        # one vector: plain arithmetic is several times cheaper than `_normalized`
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if len(q) != self.dim:
            raise InvalidInputError(f"query: expected {self.dim} dimensions, got {len(q)}")
        norm = math.sqrt(float(q @ q))
        if not math.isfinite(norm) or norm == 0:
            raise InvalidInputError("query: the vector must be finite and non-zero")
        return q / np.float32(norm)

    def _slot_mask(self, arrays: _Arrays, used: int, allowed: Mask | None) -> Mask:
        """Per slot: live and allowed."""
        live = arrays.live[:used]
        if allowed is None:
            return live
        if not len(allowed):
            return np.zeros(used, np.bool_)
        keys = arrays.keys[:used]
        # `clip` only ever bends keys of slots that are not live (not yet published, or
        # never used) unless some key lies past the mask's end: then test them all
        by_slot = np.take(allowed, keys.view(np.int64), mode="clip") & live
        if self._max_key >= len(allowed):
            by_slot &= keys < len(allowed)
        return by_slot

    def _exact_is_cheaper(self, k: int, n_allowed: int) -> bool:
        if n_allowed <= max(k, self.exact_max_items):
            return True
        return self._wanted(k, n_allowed) > self.max_candidates

    def _wanted(self, k: int, n_allowed: int) -> int:
        """Candidates to ask the graph for: enough that about `oversample * k` of them
        are allowed when the filter is independent of similarity."""
        fraction = n_allowed / max(1, self._count)
        return max(self.expansion_search, math.ceil(self.oversample * k / fraction))

    def _ann(self, q: Vectors, k: int, mask: Mask, n_allowed: int) -> Slots | None:
        """Allowed candidates from the graph, asking for more while too few come back;
        None when even `max_candidates` leaves fewer than `k` (the caller goes exact)."""
        wanted = self._wanted(k, n_allowed)
        while True:
            with self._graph_lock:
                found = self._graph.search(q, wanted, threads=1).keys
                in_graph = len(self._graph)
            slots: Slots = np.asarray(found, dtype=np.int64)
            slots = slots[slots < len(mask)]  # inserted after this search began
            slots = slots[mask[slots]]
            if len(slots) >= min(k, n_allowed):
                return slots
            if wanted >= min(self.max_candidates, in_graph):
                return None
            wanted = min(self.max_candidates, 4 * wanted)

    def _exact(
        self, vectors: Vectors, mask: Mask, n_allowed: int, q: Vectors, k: int
    ) -> tuple[Slots, Scores]:
        """The best `k` allowed slots by exact score."""
        if n_allowed * FULL_SCAN_RATIO < len(mask):
            return self._rank(vectors, np.flatnonzero(mask), q, k)
        # a wide filter: streaming every row beats gathering the allowed ones
        scores = np.where(mask, vectors[: len(mask)] @ q, np.float32(-np.inf))
        top = _top(scores, min(k, n_allowed)).astype(np.int64)
        return top, scores[top]

    @staticmethod
    def _rank(vectors: Vectors, slots: Slots, q: Vectors, k: int) -> tuple[Slots, Scores]:
        """Exact scores of `slots` against `q`; the best `k`, in chunks of rows."""
        if len(slots) <= EXACT_CHUNK:
            scores = vectors[slots] @ q
            top = _top(scores, k)
            return slots[top], scores[top]
        best_slots: list[Slots] = []
        best_scores: list[Scores] = []
        for start in range(0, len(slots), EXACT_CHUNK):
            part = slots[start : start + EXACT_CHUNK]
            scores = vectors[part] @ q
            top = _top(scores, k)
            best_slots.append(part[top])
            best_scores.append(scores[top])
        merged_slots, merged_scores = np.concatenate(best_slots), np.concatenate(best_scores)
        order = _top(merged_scores, k)
        return merged_slots[order], merged_scores[order]

    # -- snapshots ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to one file (npz: settings, the usearch graph in its own
        format, keys, live flags, vectors and free slots), atomically."""
        target = Path(path)
        fields = self._fields()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, allow_pickle=False, **fields)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def to_bytes(self) -> bytes:
        """The index as `save` writes it, in memory (to embed in another file)."""
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **self._fields())
        return buffer.getvalue()

    def _fields(self) -> dict[str, npt.NDArray[Any]]:
        with self._writer:
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "dim": self.dim,
                "connectivity": self.connectivity,
                "expansion_add": self.expansion_add,
                "expansion_search": self.expansion_search,
                "dtype": self.dtype,
                "exact_max_items": self.exact_max_items,
                "oversample": self.oversample,
                "max_candidates": self.max_candidates,
            }
            with self._graph_lock:
                graph = np.frombuffer(self._graph.save(), dtype=np.uint8)
            used, arrays = self._used, self._arrays
            return {
                "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                "graph": graph,
                "keys": arrays.keys[:used].copy(),
                "live": arrays.live[:used].copy(),
                "vectors": arrays.vectors[:used].copy(),
                "free": np.asarray(self._free, np.int64),
            }

    def vectors(self, keys: npt.ArrayLike) -> Vectors:
        """The stored (unit-length) vectors of `keys`, in order; KeyError for a key
        that is not in the index."""
        wanted = np.asarray(keys, dtype=np.uint64).reshape(-1).tolist()
        with self._rw.read():
            slots = [self._slot_of[k] for k in wanted]
            return self._arrays.vectors[slots].copy()

    @classmethod
    def load(cls, path: str | os.PathLike[str] | IO[bytes]) -> VectorIndex:
        """Restore an index written by `save`; it answers every search identically.
        A file that is not such an index raises `ArtifactFormatError`; a missing or
        unreadable one, `OSError`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {name: data[name] for name in data.files}
            meta = json.loads(fields["meta"].tobytes())
            if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected {FORMAT} version {FORMAT_VERSION}")
            index = cls(
                meta["dim"],
                connectivity=meta["connectivity"],
                expansion_add=meta["expansion_add"],
                expansion_search=meta["expansion_search"],
                dtype=meta["dtype"],
                exact_max_items=meta["exact_max_items"],
                oversample=meta["oversample"],
                max_candidates=meta["max_candidates"],
            )
            index._restore(fields)
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, BadZipFile) as e:
            raise ArtifactFormatError(str(path), f"not a vector index: {e}") from e
        return index

    def _restore(self, fields: dict[str, Any]) -> None:
        with self._graph_lock:
            self._graph.load(fields["graph"].tobytes())
            self._graph.expansion_search = self._expansion_search
        used = len(fields["keys"])
        self._arrays = _Arrays.empty(max(_MIN_CAPACITY, used), self.dim)
        self._arrays.vectors[:used] = fields["vectors"]
        self._arrays.keys[:used] = fields["keys"]
        self._arrays.live[:used] = fields["live"]
        self._used = used
        self._free = fields["free"].tolist()
        live = np.flatnonzero(fields["live"])
        self._slot_of = dict(zip(fields["keys"][live].tolist(), live.tolist(), strict=True))
        self._count = len(live)
        self._max_key = int(fields["keys"].max()) if used else -1
