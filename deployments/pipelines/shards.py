"""Catalogs split into shards: each shard replica holds the items whose id hashes to it
(every catalog of every tenant, followed from the store's change log like an ingress
does), and the ingress fans each search out to every shard and merges.

A search is exact across shards, not approximately so: each shard returns its best
items of each half (vector and BM25, `depth` each) and the ingress keeps the best
`depth` of the union before fusing, which are the whole catalog's best `depth`. BM25
scores depend on corpus statistics (documents, total length, each term's document
frequency), so a hybrid search scores on every shard with the sum of every shard's part
of them. The ingress keeps each shard's part of the statistics of the terms it has
searched (`StatsCache`), with the generation of the shard's BM25 index it was read
at, and sends the shard that generation with the sum: a shard whose index has moved on
since (a write) does not score but answers its current part, and the round is made
again with the new sum. A search whose terms were searched before takes one fan-out,
scored with statistics summed from the very states the shards scored; one with a new
term, or right after a write to the catalog, takes two, as without the cache (the
shards' parts, then their candidates).

The ingress tells the shards which embedding spaces to keep (the versions with traffic,
a shadow or a canary) every `SYNC_S`, and each answer says which of its catalogs'
indexes are complete: a version takes search traffic for a catalog only when every
shard's index of it is.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import Logger
from typing import Any, Protocol

from deployments.errors import ServekitError, Unavailable
from deployments.pipelines.catalog_index import (
    ABSENT,
    Candidates,
    Hit,
    SearchQuery,
    fuse,
    query_terms,
)
from models.lexical import CorpusStats

SYNC_S = 1.0
SYNC_TIMEOUT_S = 30.0  # a shard catching up on a long change log answers its first late
CALL_TIMEOUT_S = 10.0
# The statistics cache's bounds, over every catalog and shard: catalogs, and the terms'
# counts (about 100 bytes each, one more unit for each 64 characters of a long term: a
# query's word may be 32 KB); the least recently searched catalogs go first.
CACHED_CATALOGS = 4096
CACHED_TERMS = 100_000
TERM_UNIT_CHARS = 64


def term_units(term: str) -> int:
    """What one term's count takes of `CACHED_TERMS`."""
    return 1 + len(term) // TERM_UNIT_CHARS


def shard_of(item_id: str, shards: int) -> int:
    """The shard that holds an item: a stable hash of its id (the same in every process)."""
    return zlib.crc32(item_id.encode()) % shards


def catalog_key(tenant: str, catalog: str) -> str:
    """A catalog's key in a shard's status (a plain string: it crosses processes)."""
    return f"{tenant}\x00{catalog}"


@dataclass
class ShardStatus:
    """What one shard said last: its change-log position and, per catalog it holds,
    the spaces whose index is complete (a catalog it does not hold: all kept ones)."""

    started: bool = False
    seq: int = 0
    ready: dict[str, list[str]] = field(default_factory=dict)
    # per catalog: {"items": n, "vectors": {space: n}}
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # spaces no longer kept whose indexes the shard still holds: seconds left, and per
    # catalog those complete (a shard of an earlier release says nothing: none)
    retained: dict[str, int] = field(default_factory=dict)
    retained_ready: dict[str, list[str]] = field(default_factory=dict)
    stats_generations: bool = False  # it checks the generation of cached statistics


@dataclass
class _ShardPart:
    """One shard's part of a catalog's BM25 statistics, at one generation of its index:
    documents, their total length, and the document frequency of each term asked for
    (0 included: a term this shard does not hold)."""

    generation: int
    n_docs: int = 0
    total_length: float = 0.0
    df: dict[str, int] = field(default_factory=dict)


class StatsCache:
    """Per catalog and shard, its part of the BM25 statistics of the terms searched so
    far, at one generation of the shard's index. Counts only: nothing of an item, and
    keyed by tenant, so no catalog's figures reach another's searches."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._parts: dict[tuple[str, str], list[_ShardPart | None]] = {}  # oldest first
        self.size = 0  # terms' counts held, in `term_units`

    def lookup(
        self, tenant: str, catalog: str, terms: frozenset[str]
    ) -> tuple[list[int], CorpusStats | None] | None:
        """Each shard's generation and the summed statistics of `terms`, or None when a
        shard's part of some term is not known."""
        parts = self._parts.get((tenant, catalog))
        if parts is None:
            return None
        self._parts[tenant, catalog] = self._parts.pop((tenant, catalog))  # recently used
        if any(p is None or (p.generation != ABSENT and not terms <= p.df.keys()) for p in parts):
            return None
        return self._sum(parts, terms)  # type: ignore[arg-type]

    @staticmethod
    def _sum(
        parts: list[_ShardPart], terms: frozenset[str]
    ) -> tuple[list[int], CorpusStats | None]:
        held = [p for p in parts if p.generation != ABSENT]
        stats = None
        if held:
            stats = CorpusStats(
                sum(p.n_docs for p in held),
                sum(p.total_length for p in held),
                {t: sum(p.df[t] for p in held) for t in sorted(terms)},
            )
        return [p.generation for p in parts], stats

    def store(
        self,
        tenant: str,
        catalog: str,
        shard: int,
        generation: int,
        stats: CorpusStats | None,
        terms: frozenset[str],
    ) -> None:
        """What shard `shard` said of `terms` at `generation` (`ABSENT`: no such catalog
        there; its part of every term is then nothing)."""
        key = (tenant, catalog)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._parts[key] = [None] * self.shards
        part = parts[shard]
        if part is None or part.generation != generation:
            self.size -= 0 if part is None else sum(map(term_units, part.df))
            part = parts[shard] = _ShardPart(generation)
        if stats is not None:
            part.n_docs, part.total_length = stats.n_docs, stats.total_length
            for term in terms:
                self.size += 0 if term in part.df else term_units(term)
                part.df[term] = stats.df.get(term, 0)
        if self.size > CACHED_TERMS or len(self._parts) > CACHED_CATALOGS:
            self._shrink(key)

    def _shrink(self, key: tuple[str, str]) -> None:
        """Drop the least recently searched catalogs but `key` until within bounds, then
        `key`'s too if they alone are over."""
        for old in [k for k in self._parts if k != key]:
            if self.size <= CACHED_TERMS and len(self._parts) <= CACHED_CATALOGS:
                return
            self._drop(old)
        if self.size > CACHED_TERMS:
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        parts = self._parts.pop(key, None) or []
        self.size -= sum(sum(map(term_units, p.df)) for p in parts if p is not None)


class Shard(Protocol):
    """How the ingress reaches one shard (`wiring.ShardCalls`)."""

    async def sync(self, spaces: list[str]) -> dict[str, Any]: ...

    async def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None: ...

    async def term_stats_at(
        self, tenant: str, catalog: str, text: str
    ) -> tuple[int, CorpusStats | None]: ...

    async def candidates(
        self, q: SearchQuery, stats: CorpusStats | None, generation: int | None = None
    ) -> Candidates: ...

    async def close(self) -> None: ...


class ShardSet:
    """The ingress's side: fan out, merge, and keep the shards' status."""

    def __init__(
        self,
        shards: Sequence[Shard],
        log: Logger,
        on_round: Callable[[str], None] | None = None,
    ) -> None:
        """`on_round`: told of each fan-out round of a search, by kind (`rounds`)."""
        self.shards = list(shards)
        self.log = log
        self.status = [ShardStatus() for _ in self.shards]
        self.spaces: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.stats_cache = StatsCache(len(self.shards))
        # Fan-out rounds of searches: the shards' BM25 statistics asked for, candidates
        # asked for, and of those, rounds a shard answered stale.
        self.rounds = {"stats": 0, "candidates": 0, "stale": 0}
        self._on_round = on_round

    async def start(self, spaces: list[str]) -> None:
        """Keep these spaces on every shard; sync now, then every `SYNC_S`."""
        self.spaces = list(spaces)
        await self.sync_once()
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync_once()

    async def sync_once(self) -> None:
        """Tell every shard the spaces; record what each answers (a failed shard keeps
        its last status, and says so in the log)."""

        async def one(n: int, shard: Shard) -> None:
            try:
                got = await asyncio.wait_for(shard.sync(self.spaces), SYNC_TIMEOUT_S)
            except Exception as e:
                self.log.warning(
                    "catalog shard did not answer",
                    extra={"fields": {"shard": n, "error": type(e).__name__}},
                )
                return
            self.status[n] = ShardStatus(
                True,
                int(got["seq"]),
                dict(got["ready"]),
                dict(got.get("sizes", {})),
                dict(got.get("retained", {})),
                dict(got.get("retained_ready", {})),
                bool(got.get("stats_generations", False)),
            )

        await asyncio.gather(*(one(n, s) for n, s in enumerate(self.shards)))

    def ready_spaces(self, tenant: str, catalog: str) -> list[str]:
        """Kept spaces whose index of the catalog is complete on every shard."""
        key = catalog_key(tenant, catalog)
        ready = set(self.spaces)
        for status in self.status:
            if not status.started:
                return []
            ready &= set(status.ready.get(key, self.spaces))
        return [s for s in self.spaces if s in ready]

    def retained(self) -> dict[str, int]:
        """Spaces no longer kept that every shard still holds, with the seconds until
        the first shard drops them."""
        if not self.status or not all(status.started for status in self.status):
            return {}
        common = set.intersection(*(set(status.retained) for status in self.status))
        common -= set(self.spaces)
        return {s: min(int(st.retained[s]) for st in self.status) for s in sorted(common)}

    def complete_spaces(self, tenant: str, catalog: str) -> list[str]:
        """The kept spaces complete on every shard, then the retained ones."""
        key = catalog_key(tenant, catalog)
        complete = set(self.retained())
        for status in self.status:
            complete &= set(status.retained_ready.get(key, ()))
        return self.ready_spaces(tenant, catalog) + sorted(complete)

    def indexes(self, tenant: str | None) -> list[dict[str, Any]]:
        """Every catalog (of `tenant`, or all) summed over the shards: items, and per
        kept (and retained, with its `retained_s`) space its vectors and whether every
        shard's index is complete."""
        keys = sorted({key for status in self.status for key in status.sizes})
        retained = self.retained()
        rows = []
        for key in keys:
            owner, catalog = key.split("\x00", 1)
            if tenant is not None and owner != tenant:
                continue
            sizes = [status.sizes.get(key, {}) for status in self.status]
            ready = set(self.complete_spaces(owner, catalog))
            spaces: dict[str, dict[str, Any]] = {
                space: {
                    "vectors": sum(int(s.get("vectors", {}).get(space, 0)) for s in sizes),
                    "complete": space in ready,
                }
                for space in [*self.spaces, *retained]
            }
            for space, left in retained.items():
                spaces[space]["retained_s"] = left
            items = sum(int(s.get("items", 0)) for s in sizes)
            rows.append({"tenant_id": owner, "catalog": catalog, "items": items,
                         "indexes": spaces, "shards": len(self.shards)})  # fmt: skip
        return rows

    @property
    def seq(self) -> int:
        """The change-log position every shard has reached."""
        return min((s.seq for s in self.status), default=0)

    async def search(self, q: SearchQuery) -> list[Hit]:
        """The catalog's k best items, as one index over every shard's items would
        answer."""
        if q.hybrid and all(status.stats_generations for status in self.status):
            return await self._hybrid(q)
        # A vector search; or a shard of an earlier release: the parts first, every time.
        return await self._scored(q, await self._asked_stats(q) if q.hybrid else None)

    async def _hybrid(self, q: SearchQuery) -> list[Hit]:
        """A hybrid search scored with cached statistics where they are known and still
        the shards' own (see the module docstring)."""
        terms = query_terms(q.text)
        cache = self.stats_cache
        known = cache.lookup(q.tenant, q.catalog, terms)
        if known is None:
            self._round("stats")
            parts = await self._all(lambda n, s: s.term_stats_at(q.tenant, q.catalog, q.text))
            for n, (generation, stats) in enumerate(parts):
                cache.store(q.tenant, q.catalog, n, generation, stats, terms)
            known = cache.lookup(q.tenant, q.catalog, terms)
        if known is not None:
            generations, summed = known
            self._round("candidates")
            found = await self._all(lambda n, s: s.candidates(q, summed, generations[n]))
            stale = [(n, c.stale) for n, c in enumerate(found) if c.stale is not None]
            if not stale:
                return fuse(found, q.k, q.hybrid, q.fusion)
            self._round("stale")
            for n, (generation, stats) in stale:
                cache.store(q.tenant, q.catalog, n, generation, stats, terms)
            known = cache.lookup(q.tenant, q.catalog, terms)
        # A shard was written to meanwhile: score with every shard's latest part, as a
        # search without the cache does, unchecked (asked anew if the cache let go of
        # the catalog: it keeps less than it would take).
        return await self._scored(q, known[1] if known is not None else await self._asked_stats(q))

    async def _asked_stats(self, q: SearchQuery) -> CorpusStats | None:
        """Every shard's part of the query's statistics, asked now, summed (None: no
        shard holds the catalog)."""
        self._round("stats")
        parts = await self._all(lambda n, s: s.term_stats(q.tenant, q.catalog, q.text))
        held = [p for p in parts if p is not None]
        return sum(held[1:], held[0]) if held else None

    async def _scored(self, q: SearchQuery, stats: CorpusStats | None) -> list[Hit]:
        """Every shard's candidates scored with `stats` as they are, fused."""
        self._round("candidates")
        found = await self._all(lambda n, s: s.candidates(q, stats))
        return fuse([c for c in found if c is not None], q.k, q.hybrid, q.fusion)

    def _round(self, kind: str) -> None:
        self.rounds[kind] += 1
        if self._on_round is not None:
            self._on_round(kind)

    async def _all(self, call: Any) -> list[Any]:
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(call(n, s) for n, s in enumerate(self.shards))), CALL_TIMEOUT_S
            )
        except ServekitError:
            raise
        except Exception as e:  # a shard replica died or timed out: the caller retries
            raise Unavailable("search: a catalog shard did not answer; try again") from e

    async def close(self) -> None:
        """Stop syncing; let the shards' connections go."""
        if self._task is not None:
            self._task.cancel()
        await asyncio.gather(*(shard.close() for shard in self.shards))
