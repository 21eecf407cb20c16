"""A replica's searchable copy of one tenant catalog: items by slot, attribute columns
for filters, a BM25 index over the text fields, and one vector index per embedding space
(`model/version`), so a query embedded by a version is only ever compared with item
vectors of the same version.

Writes come from one follower (the change log) and from this replica's own upserts;
searches run concurrently. A lock guards the slot tables; the indexes guard themselves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from deployments.pipelines.filters import AttributeColumns, Mask
from models.ann import VectorIndex
from models.fusion import convex, rrf
from models.lexical import CorpusStats, LexicalIndex, StaleStats, tokenize
from stores.catalog import Item, item_text

__all__ = ["Candidates", "CatalogIndex", "Hit", "SearchQuery", "fuse", "item_text"]

CANDIDATES = 50  # per half of a hybrid search, before fusion
# The vector half's weight in a convex fusion, chosen on the dev queries of `make eval`
# (0.45: BM25 wins the tie between each half's first item, so an exact model number
# comes first; lower, paraphrases lose).
CONVEX_ALPHA = 0.45
TEXT_WEIGHTS = {"title": 2.0, "name": 2.0}  # BM25: a title word counts twice
# How the BM25 index analyses text; `query_terms` analyses a query the same way.
STEM, STOPWORDS = True, True
# A shard's generation for a catalog it does not hold (an index's are random, never 0).
ABSENT = 0
# A deleted item's slot is given to a new item only after this long: a search maps the
# slots its indexes answered to items after searching them, so a slot reused meanwhile
# would answer another item with this one's score. Searches end well within it.
REUSE_SLOT_AFTER_S = 60.0


def query_terms(text: str) -> frozenset[str]:
    """The terms a catalog's BM25 index looks up for a query `text`."""
    return frozenset(tokenize(text, stem=STEM, stopwords=STOPWORDS))


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item: Item
    score: float


@dataclass(frozen=True)
class SearchQuery:
    """One search: whose catalog, which embedding space, the query's vector and text,
    how many results, the filters and how to rank."""

    tenant: str
    catalog: str
    space: str
    vector: npt.NDArray[np.float32] | None
    text: str
    k: int
    filters: dict[str, Any] | None
    hybrid: bool
    fusion: str = "convex"


@dataclass(frozen=True)
class Candidates:
    """Each half's best items of one index (or shard), before fusion. `stale`: a shard
    asked to score BM25 with statistics it no longer matches answers its own instead,
    as (generation, statistics; `ABSENT`, None: it holds no such catalog), and no
    lexical half."""

    vector: list[Hit]
    lexical: list[Hit]
    stale: tuple[int, CorpusStats | None] | None = None


class CatalogIndex:
    """Items, filters, BM25 and per-space vectors of one catalog."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[str, int] = {}
        self.items: dict[int, Item] = {}
        self.attrs = AttributeColumns()
        self.lexical = LexicalIndex(field_weights=TEXT_WEIGHTS, stem=STEM, stopwords=STOPWORDS)
        self.spaces: dict[str, VectorIndex] = {}
        self.with_vector: dict[str, set[int]] = {}  # space -> slots that have a vector
        self.settings: dict[str, Any] = {}  # the catalog's own (e.g. hybrid by default)
        self._next = 0
        # Slots of deleted items, oldest first, with when: an index whose items come and
        # go (ids never seen again) keeps as many slots as it holds items, not as many
        # ids as it ever saw (filter masks and attribute columns are as long).
        self._freed: deque[tuple[float, int]] = deque()
        self.clock = time.monotonic

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_snapshot(cls, items: Sequence[Item], spaces: dict[str, VectorIndex]) -> CatalogIndex:
        """An index of a snapshot's items, whose vector indexes are keyed by position
        (`models/catalog_snapshot.py`): item n gets slot n, so they serve as they are."""
        index = cls()
        if index.upsert_many(items) != list(range(len(items))):
            raise ValueError("a snapshot's item ids repeat")
        for space, vectors in spaces.items():
            index.spaces[space] = vectors
            index.with_vector[space] = set(range(len(items)))
        return index

    def upsert(self, item: Item) -> int:
        """Add or replace an item; its vectors are dropped until new ones arrive."""
        return self.upsert_many([item])[0]

    def upsert_many(
        self,
        items: Sequence[Item],
        vectors: Mapping[str, Mapping[str, npt.NDArray[np.float32]]] | None = None,
    ) -> list[int]:
        """Add or replace items (the last of an id given twice wins), each index written
        once: loading a whole catalog this way takes one BM25 write, not one per item
        (each rebuilds the BM25 delta, so item by item costs grow with the catalog).

        `vectors` (by space, then item id) come in the same write: the items become
        visible (to searches, filters and `complete`) only once their vectors are in,
        so a space that gets a vector for each of them stays complete throughout, and
        a replaced item keeps a vector there. In spaces where an item gets none, its
        old vector is dropped until a new one arrives."""
        with self.lock:  # slots first: searches skip slots that have no item yet
            slots = []
            for item in items:
                slot = self.slots.get(item.id)
                if slot is None:
                    slot = self.slots[item.id] = self._new_slot()
                slots.append(slot)
        self.lexical.upsert(slots, [item.text for item in items])
        last = {item.id: slot for item, slot in zip(items, slots, strict=True)}
        given = vectors or {}
        for item_id, slot in last.items():
            self._forget_vectors(slot, keep={s for s, v in given.items() if item_id in v})
        for space, by_id in given.items():
            self._add_vectors(space, [(last[i], v) for i, v in by_id.items() if i in last])
        with self.lock:
            for item, slot in zip(items, slots, strict=True):
                self.items[slot] = item
                self.attrs.set(slot, item.attributes)
        return slots

    def _new_slot(self) -> int:
        """A slot for a new item (the lock held): one freed long enough ago, else the
        next one."""
        if self._freed and self._freed[0][0] <= self.clock() - REUSE_SLOT_AFTER_S:
            return self._freed.popleft()[1]
        self._next += 1
        return self._next - 1

    def delete(self, item_id: str) -> bool:
        """Remove an item everywhere; False when it was not here. Its slot is given to a
        new item after `REUSE_SLOT_AFTER_S`."""
        with self.lock:
            slot = self.slots.pop(item_id, None)
            if slot is None:
                return False
            self.items.pop(slot, None)
            self.attrs.clear(slot)
        self.lexical.remove([slot])
        self._forget_vectors(slot)
        with self.lock:
            self._freed.append((self.clock(), slot))
        return True

    def _forget_vectors(self, slot: int, keep: Collection[str] = ()) -> None:
        keys = np.array([slot], dtype=np.uint64)
        for space, index in self.spaces.items():
            if space not in keep and slot in self.with_vector[space]:
                index.remove(keys)
                self.with_vector[space].discard(slot)

    def set_vectors(self, space: str, vectors: dict[str, npt.NDArray[np.float32]]) -> None:
        """Vectors of items (by id) in one space; ids no longer here are ignored."""
        with self.lock:
            pairs = [(self.slots[i], v) for i, v in vectors.items() if i in self.slots]
        self._add_vectors(space, pairs)

    def _add_vectors(self, space: str, pairs: list[tuple[int, npt.NDArray[np.float32]]]) -> None:
        """Insert or replace the vectors of these slots in `space`."""
        if not pairs:
            return
        matrix = np.stack([v for _, v in pairs]).astype(np.float32)
        index = self.spaces.get(space)
        if index is None:
            index = self.spaces[space] = VectorIndex(matrix.shape[1])
            self.with_vector[space] = set()
        keys = np.array([s for s, _ in pairs], dtype=np.uint64)
        index.upsert(keys, matrix)
        self.with_vector[space].update(int(k) for k in keys)

    def missing(self, space: str) -> list[Item]:
        """Items without a vector in `space` (to embed)."""
        have = self.with_vector.get(space, set())
        with self.lock:
            return [item for slot, item in self.items.items() if slot not in have]

    def complete(self, space: str) -> bool:
        """Whether every item has a vector in `space`."""
        with self.lock:
            return len(self.with_vector.get(space, ())) >= len(self.items)

    def drop_space(self, space: str) -> None:
        """Forget a retired version's vectors."""
        self.spaces.pop(space, None)
        self.with_vector.pop(space, None)

    def get(self, item_id: str) -> Item | None:
        """One item by id."""
        with self.lock:
            slot = self.slots.get(item_id)
            return self.items.get(slot) if slot is not None else None

    def vectors_of(self, space: str, ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """The vectors of those of `ids` that have one in `space` (rows in that order)."""
        index = self.spaces.get(space)
        with self.lock:
            have = self.with_vector.get(space, set())
            slots = [s for i in ids if (s := self.slots.get(i)) is not None and s in have]
        if index is None or not slots:
            return np.zeros((0, 0), np.float32)
        return index.vectors(slots)

    def matching(
        self, ids: Sequence[str] | None, filters: dict[str, Any] | None, limit: int
    ) -> list[Item]:
        """Items satisfying `filters`: those of `ids` in that order, or (None) every item
        in slot order; at most `limit`. A bad filter raises `FilterError`."""
        with self.lock:
            allowed = self.attrs.mask(filters, self._next) if filters else None
            if ids is None:
                slots: Iterable[int] = sorted(self.items)
            else:
                slots = [s for i in ids if (s := self.slots.get(i)) is not None]
            out = []
            for slot in slots:
                if slot in self.items and (allowed is None or allowed[slot]):
                    out.append(self.items[slot])
                    if len(out) >= limit:
                        break
            return out

    def term_stats(self, text: str) -> CorpusStats:
        """This catalog's part of the BM25 statistics of a query (summed over shards)."""
        return self.lexical.stats(text)

    def term_stats_at(self, text: str) -> tuple[int, CorpusStats]:
        """`term_stats` and the BM25 index's generation they were read at."""
        return self.lexical.stats_at(text)

    def candidates(
        self, q: SearchQuery, stats: CorpusStats | None = None, generation: int | None = None
    ) -> Candidates:
        """The best items of each half before fusion: by vector similarity, and by BM25
        when `q.hybrid` (scored with `stats`, the whole catalog's, on a shard). With
        `generation` (that of this index's part of `stats`), BM25 scores only while the
        index is at it; else the answer is `stale`, with no lexical half."""
        return self._candidates(
            q.space, q.vector, q.text, q.k, q.filters, q.hybrid, stats, generation
        )

    def _candidates(
        self,
        space: str,
        vector: npt.NDArray[np.float32] | None,
        text: str,
        k: int,
        filters: dict[str, Any] | None,
        hybrid: bool,
        stats: CorpusStats | None,
        generation: int | None = None,
    ) -> Candidates:
        with self.lock:
            size = self._next
            allowed: Mask | None = self.attrs.mask(filters, size) if filters else None
        wanted = depth(k, hybrid)
        ranked: list[tuple[int, float]] = []
        index = self.spaces.get(space)
        if vector is not None and index is not None and len(index):
            keys, scores = index.search(vector, wanted, allowed)
            ranked = [(int(key), float(s)) for key, s in zip(keys, scores, strict=True)]
        stale = None
        try:
            lexical = (
                self.lexical.search(text, wanted, allowed, stats, generation) if hybrid else []
            )
        except StaleStats as e:
            lexical, stale = [], (e.generation, e.stats)
        with self.lock:
            return Candidates(
                [Hit(self.items[s], score) for s, score in ranked if s in self.items],
                [Hit(self.items[s], score) for s, score in lexical if s in self.items],
                stale,
            )

    def search(
        self,
        space: str,
        vector: npt.NDArray[np.float32] | None,
        text: str,
        k: int,
        filters: dict[str, Any] | None,
        hybrid: bool,
        fusion: str = "convex",
        alpha: float = CONVEX_ALPHA,
    ) -> list[Hit]:
        """The k best items: by vector similarity, or fused with BM25 when `hybrid`
        (`convex`: min-max normalised scores, the vector half weighing `alpha`; `rrf`:
        reciprocal ranks)."""
        found = self._candidates(space, vector, text, k, filters, hybrid, None)
        return fuse([found], k, hybrid, fusion, alpha)


def depth(k: int, hybrid: bool) -> int:
    """Candidates each half contributes: a fusion needs more than the k it keeps."""
    return max(k, CANDIDATES) if hybrid else k


def _best(hits: list[Hit], n: int) -> list[Hit]:
    # ties by item id: one index and its shards order equal scores alike
    return sorted(hits, key=lambda h: (-h.score, h.item.id))[:n]


def fuse(
    parts: Sequence[Candidates],
    k: int,
    hybrid: bool,
    fusion: str = "convex",
    alpha: float = CONVEX_ALPHA,
) -> list[Hit]:
    """The k best of the candidates of one index, or of every shard of a catalog: each
    half's best `depth` merged, then fused when `hybrid`. The shards' halves hold every
    item of the whole catalog's halves, so the answer is the one index's."""
    wanted = depth(k, hybrid)
    vector = _best([h for part in parts for h in part.vector], wanted)
    if not hybrid:
        return vector[:k]
    lexical = _best([h for part in parts for h in part.lexical], wanted)
    keys: dict[str, int] = {}
    items: dict[int, Item] = {}

    def ranked(hits: list[Hit]) -> list[tuple[int, float]]:
        out = []
        for hit in hits:
            key = keys.setdefault(hit.item.id, len(keys))
            items[key] = hit.item
            out.append((key, hit.score))
        return out

    vec, lex = ranked(vector), ranked(lexical)
    if fusion == "rrf":
        fused = rrf([[key for key, _ in vec], [key for key, _ in lex]], k)
    else:
        fused = convex(vec, lex, alpha, k)
    return [Hit(items[key], score) for key, score in fused[:k]]
