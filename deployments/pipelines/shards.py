"""Catalogs split into shards: each shard replica holds the items whose id hashes to it
(every catalog of every tenant, followed from the store's change log like an ingress
does), and the ingress fans each search out to every shard and merges.

A search is exact across shards, not approximately so: each shard returns its best
items of each half (vector and BM25, `depth` each) and the ingress keeps the best
`depth` of the union before fusing, which are the whole catalog's best `depth`. BM25
scores depend on corpus statistics (documents, total length, each term's document
frequency), so a hybrid search first asks every shard for its part of them, and every
shard then scores with the sum: two fan-outs, both small.

The ingress tells the shards which embedding spaces to keep (the versions with traffic,
a shadow or a canary) every `SYNC_S`, and each answer says which of its catalogs'
indexes are complete: a version takes search traffic for a catalog only when every
shard's index of it is.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import Logger
from typing import Any, Protocol

from deployments.errors import ServekitError, Unavailable
from deployments.pipelines.catalog_index import Candidates, Hit, SearchQuery, fuse
from models.lexical import CorpusStats

SYNC_S = 1.0
SYNC_TIMEOUT_S = 30.0  # a shard catching up on a long change log answers its first late
CALL_TIMEOUT_S = 10.0


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


class Shard(Protocol):
    """How the ingress reaches one shard (`wiring.ShardCalls`)."""

    async def sync(self, spaces: list[str]) -> dict[str, Any]: ...

    async def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None: ...

    async def candidates(self, q: SearchQuery, stats: CorpusStats | None) -> Candidates: ...

    async def close(self) -> None: ...


class ShardSet:
    """The ingress's side: fan out, merge, and keep the shards' status."""

    def __init__(self, shards: Sequence[Shard], log: Logger) -> None:
        self.shards = list(shards)
        self.log = log
        self.status = [ShardStatus() for _ in self.shards]
        self.spaces: list[str] = []
        self._task: asyncio.Task[None] | None = None

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
        stats = None
        if q.hybrid:
            parts = await self._all(lambda s: s.term_stats(q.tenant, q.catalog, q.text))
            known = [p for p in parts if p is not None]
            stats = sum(known[1:], known[0]) if known else None
        found = await self._all(lambda s: s.candidates(q, stats))
        return fuse([c for c in found if c is not None], q.k, q.hybrid, q.fusion)

    async def _all(self, call: Any) -> list[Any]:
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(call(s) for s in self.shards)), CALL_TIMEOUT_S
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
