"""Search over tenant catalogs: the replica's catalog indexes, kept current from the
store's change log, item embeddings per model version, and the search itself.

The store (`stores/catalog_sql.py`) is the source of truth: an upsert is embedded for
every version that serves the search model (traffic, shadow or canary), written with
its vectors, applied here at once and by every other replica within `follow_s` (they
read the vectors the writer stored). A version added later is backfilled: the vectors
the store already holds for it are read at once, page by page, then the items it still
lacks vectors for are embedded in the background; searches use it only when its index
is complete. A version that leaves the set keeps its index for `RETAIN_S` (a quick
rollback finds it as it was, less the items changed meanwhile), then it is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from logging import Logger
from typing import Any

import numpy as np
import numpy.typing as npt

from deployments.pipelines.catalog_index import (
    ABSENT,
    Candidates,
    CatalogIndex,
    Hit,
    SearchQuery,
    item_text,
)
from deployments.pipelines.filters import AttributeColumns
from deployments.pipelines.shards import ShardSet, catalog_key
from models.ann import VectorIndex
from models.catalog_snapshot import CatalogSnapshot
from models.lexical import CorpusStats
from stores.catalog import (
    CATALOG_CHANGE,
    CatalogStore,
    Change,
    Item,
    attribute_problem,
    item_problem,
    same_body,
)

# (tenant, catalog, loader): a catalog snapshot to start from (verified by the loader)
SnapshotSource = tuple[str, str, Callable[[], CatalogSnapshot]]
# (tenant, space, texts) -> vectors: the tenant owns the catalog (the embedding cache's key)
EmbedFn = Callable[[str, str, list[str]], Awaitable[npt.NDArray[np.float32]]]
# (space, items) -> vectors: a model that reads whole items (a recommender's item tower)
ItemVectorFn = Callable[[str, list[Item]], npt.NDArray[np.float32]]
ProgressFn = Callable[[str, int], None]  # (space, items without a vector)
IdleFn = Callable[[str], bool]  # whether a space's version has nothing waiting
# Vectors of items by space, then item id.
Vectors = dict[str, dict[str, npt.NDArray[np.float32]]]
PROGRESS_EVERY_S = 2.0
PAGE = 1000
# A returning space's stored vectors are read this many items a store round trip, each
# page indexed under the writers' lock: an upsert meanwhile waits for one page at most.
LOAD_PAGE = 256
BACKFILL_BATCH = 4
ITEM_MODEL_BATCH = 512  # an item tower embeds a batch in milliseconds: no duty limit
# Backfill embeds at most this share of the time, so live requests keep their latency
# (and never meet a full queue) while a new version's index is built.
BACKFILL_DUTY = 0.2
# A version that has just been given traffic first serves it for a while: its batcher
# measures its throughput on live requests before backfill adds to its queue.
BACKFILL_DELAY_S = 10.0
IDLE_POLL_S = 0.05
BACKFILL_RETRY_S = 5.0  # after an embedding failure, how soon the backfill tries again
# A version that leaves the set (no traffic, shadow or canary left) keeps its indexes
# this long: a rollback within it searches them at once instead of rebuilding every
# vector graph (~0.5 ms an item). Costs that version's vectors in memory meanwhile.
RETAIN_S = 600.0


def _nothing(item_id: str) -> bool:
    return False


@dataclass(frozen=True)
class SearchResult:
    """What a search answers: the space searched and the hits."""

    space: str
    hits: list[Hit]
    seq: int  # the change-log position the replica's indexes reflect


def _unindexable(item: Item) -> str | None:
    """Why an item cannot be indexed (an attribute no filter column holds), or None."""
    for name, value in item.attributes.items():
        if (problem := attribute_problem(value)) is not None:
            return f"attributes.{name}: {problem}"
    return None


def _changes_body(index: CatalogIndex | None, item: Item) -> bool:
    """Whether an upsert of `item` changes what `index` holds (None: nothing yet)."""
    current = index.get(item.id) if index is not None else None
    return current is None or not same_body(current, item)


def stored_space(space: str, sha256: str | None) -> str:
    """The name the vectors of `space` made by the artifact `sha256` have in the catalog
    store (`SearchService.stored_space`)."""
    return f"{space}@{sha256[:12]}" if sha256 else space


class SearchService:
    """Every catalog of every tenant this replica serves searches for."""

    def __init__(
        self,
        store: CatalogStore,
        embed: EmbedFn,
        follow_s: float,
        log: Logger,
        progress: ProgressFn | None = None,
        backfill_delay_s: float = BACKFILL_DELAY_S,
        idle: IdleFn | None = None,
        snapshots: list[SnapshotSource] | None = None,
        space_artifacts: dict[str, str] | None = None,
        owns: Callable[[str], bool] | None = None,
        shards: ShardSet | None = None,
        retain_s: float = RETAIN_S,
    ) -> None:
        """`snapshots`: catalogs to start from a snapshot artifact; `space_artifacts`:
        the model artifact's sha256 of each space, which a snapshot's space must match
        and which names the space's vectors in the store (`stored_space`): every
        service over one store (the Ingress, shards, the recommendation worker) passes
        the same.
        `owns`: on a shard, whether an item id is this shard's (the others are never
        indexed here). `shards`: on an ingress of a sharded catalog, the shards that
        hold the items (this service then writes to the store and indexes nothing).
        `retain_s`: how long a space that is no longer kept keeps its indexes (0: it
        loses them at once)."""
        self.owns = owns
        self.shards = shards
        # (model, its vectors) of a model whose spaces read whole items (the recommender)
        self.item_model: tuple[str, ItemVectorFn] | None = None
        if shards is not None:
            self.owns = _nothing
        self.snapshots = snapshots or []
        self.space_artifacts = space_artifacts or {}
        # Items loaded from a snapshot that the change log has not shown yet: what is
        # still here once the replica has caught up is not in the store, and goes.
        self._unconfirmed: dict[tuple[str, str], set[str]] = {}
        self.store = store
        self.idle = idle
        self.backfill_delay_s = backfill_delay_s
        self.progress = progress
        self._reported: set[str] = set()  # spaces whose pending count was reported
        self.embed = embed
        self.follow_s = follow_s
        self.log = log
        self.catalogs: dict[tuple[str, str], CatalogIndex] = {}
        # Each tenant's catalog names, as of the number of catalogs held (they are only
        # ever added): a request naming no catalog looks its tenant's up, not them all.
        self._by_tenant: dict[str, list[str]] = {}
        self._by_tenant_of = 0
        self.spaces: list[str] = []
        self.retain_s = retain_s
        # Spaces no longer kept whose indexes stay until then (monotonic time): not
        # written to (a changed item loses its vector there), searched only as a fallback.
        self.retained: dict[str, float] = {}
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()  # stored vectors of returning spaces
        self._backfill_task: asyncio.Task[None] | None = None
        self._backfill_due = False
        self._lock = asyncio.Lock()  # one writer at a time: follower, upserts, backfill

    # ---- following the store -----------------------------------------------------

    async def start(self, spaces: list[str]) -> None:
        """Catch up with the change log (first call), set the spaces to keep, backfill.

        A space that leaves is retained for `retain_s`; one that comes back (retained
        or not) starts reading its stored vectors at once, in the background, page by
        page, before the backfill embeds what the store lacks."""
        now = time.monotonic()
        returning = [s for s in spaces if s not in self.spaces]
        for space in self.spaces:
            if space not in spaces:
                self.retained[space] = now + self.retain_s
        for space in spaces:
            self.retained.pop(space, None)
        self.spaces = list(spaces)
        await self._drop_expired()
        if self.shards is not None:
            await self.shards.start(spaces)
        if self._task is None:
            for source in self.snapshots if self.owns is None else []:
                await self._load_snapshot(*source)
            await self.follow_once()  # reads every kept space's stored vectors
            self._drop_unconfirmed()
            self._task = asyncio.create_task(self._follow())
        elif returning and self.catalogs:
            load = asyncio.create_task(self._load_stored(returning))
            self._loads.add(load)
            load.add_done_callback(self._loads.discard)
        if self._backfill_task is None or self._backfill_task.done():
            self._backfill_task = asyncio.create_task(self.backfill(self.backfill_delay_s))
        else:
            self._backfill_due = True

    async def _drop_expired(self) -> None:
        """Drop the indexes of retained spaces whose time is up (under the writers'
        lock: an apply running in a thread walks each index's spaces)."""
        if not any(until <= time.monotonic() for until in self.retained.values()):
            return
        async with self._lock:
            now = time.monotonic()  # kept again while the lock was awaited: not expired
            expired = [s for s, until in self.retained.items() if until <= now]
            for space in expired:
                del self.retained[space]
                for index in self.catalogs.values():
                    index.drop_space(space)
        if expired:
            self.log.info("retired indexes dropped", extra={"fields": {"spaces": expired}})

    async def _load_stored(self, spaces: list[str]) -> None:
        """Read the stored vectors of spaces that came back into use, every catalog,
        `LOAD_PAGE` items a store round trip: what their indexes lack and another replica
        (or this one, before) stored. No delay: nothing is embedded here. Each page is
        read and indexed under the writers' lock, so no upsert lands in between."""
        started, loaded = time.monotonic(), 0
        try:
            for (tenant, catalog), index in list(self.catalogs.items()):
                for space in spaces:
                    ids = [item.id for item in index.missing(space)]
                    for start in range(0, len(ids), LOAD_PAGE):
                        if space not in self.spaces:
                            break  # left again
                        page = ids[start : start + LOAD_PAGE]
                        async with self._lock:
                            stored = await asyncio.to_thread(
                                self._read_stored, tenant, catalog, space, page
                            )
                            await asyncio.to_thread(index.set_vectors, space, stored)
                        loaded += len(stored)
        except Exception as e:  # the store is down: the backfill reads them later
            self._backfill_due = True
            self.log.warning(
                "stored vectors not loaded", extra={"fields": {"error": type(e).__name__}}
            )
            return
        seconds = round(time.monotonic() - started, 2)
        self.log.info("stored vectors loaded", extra={"fields": {
            "spaces": spaces, "vectors": loaded, "seconds": seconds}})  # fmt: skip

    async def _load_snapshot(
        self, tenant: str, catalog: str, load: Callable[[], CatalogSnapshot]
    ) -> None:
        """Start a catalog from its snapshot: its items and the vector indexes of kept
        spaces made by the configured artifact; seed the store when it lacks the catalog.
        A snapshot that cannot be fetched, read, indexed or seeded, or that holds an item
        the items route would refuse, is logged and skipped (the store still has the
        truth: the catalog is then built from the change log, as without one)."""
        started = time.monotonic()
        fields: dict[str, Any] = {"tenant": tenant, "catalog": catalog}
        try:
            snapshot, index, usable = await self._index_snapshot(load, fields)
            existing = await asyncio.to_thread(self.store.catalogs, tenant)
            seeded = None
            if catalog not in {c.name for c in existing}:
                vectors = {
                    self.stored_space(space): snapshot.vectors_bytes(space) for space in usable
                }
                seeded = await asyncio.to_thread(
                    self.store.seed, tenant, catalog, snapshot.items, vectors
                )
        except Exception as e:
            self.log.error("catalog snapshot not loaded", extra={"fields": {**fields,
                           "error": type(e).__name__, "detail": str(e)[:300]}})  # fmt: skip
            return
        async with self._lock:
            self.catalogs[(tenant, catalog)] = index
            self._unconfirmed[(tenant, catalog)] = {item.id for item in snapshot.items}
        seconds = round(time.monotonic() - started, 2)
        self.log.info("catalog snapshot loaded", extra={"fields": {**fields, "items": len(index),
                      "spaces": sorted(usable), "seeded": seeded is not None,
                      "seconds": seconds}})  # fmt: skip

    async def _index_snapshot(
        self, load: Callable[[], CatalogSnapshot], fields: dict[str, Any]
    ) -> tuple[CatalogSnapshot, CatalogIndex, dict[str, VectorIndex]]:
        """The snapshot, its items checked, and the index made of it with the usable
        spaces (kept, and made by the configured artifact)."""
        snapshot = await asyncio.to_thread(load)
        for n, item in enumerate(snapshot.items):
            if (problem := item_problem(item)) is not None:
                raise ValueError(f"items.{n}.{problem}")
        usable = {
            space: s.index
            for space, s in snapshot.spaces.items()
            if space in self.spaces and self.space_artifacts.get(space) == s.model_sha256
        }
        if other := sorted(set(snapshot.spaces) - set(usable)):
            self.log.warning(
                "catalog snapshot: spaces not used (not kept, or made by another artifact)",
                extra={"fields": {**fields, "spaces": other}},
            )
        index = await asyncio.to_thread(CatalogIndex.from_snapshot, snapshot.items, usable)
        return snapshot, index, usable

    def _drop_unconfirmed(self) -> None:
        """Remove snapshot items the store does not have (deleted, or never seeded)."""
        for (tenant, catalog), ids in self._unconfirmed.items():
            index = self.catalogs[(tenant, catalog)]
            for item_id in ids:
                index.delete(item_id)
            if ids:
                self.log.info(
                    "catalog snapshot: items the store does not have dropped",
                    extra={"fields": {"tenant": tenant, "catalog": catalog, "items": len(ids)}},
                )
        self._unconfirmed.clear()

    async def _follow(self) -> None:
        last_backfill = last_progress = time.monotonic()
        while True:
            await asyncio.sleep(self.follow_s)
            if self.progress is not None and time.monotonic() - last_progress > PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                pending = self.pending()
                # A space that left reports 0 once: its last count would otherwise stay
                # the value of its series (the gauge keeper re-reports it).
                for space in self._reported - set(pending):
                    self.progress(space, 0)
                self._reported = set(pending)
                for space, items in pending.items():
                    self.progress(space, items)
            await self._drop_expired()
            running = self._backfill_task is not None and not self._backfill_task.done()
            if (
                self._backfill_due
                and not running
                and time.monotonic() - last_backfill > BACKFILL_RETRY_S
            ):
                self._backfill_due, last_backfill = False, time.monotonic()
                self._backfill_task = asyncio.create_task(self.backfill())
            try:
                await self.follow_once()
            except Exception as e:  # the store is down: keep serving, try again
                self.log.warning(
                    "catalog change log unreachable", extra={"fields": {"error": type(e).__name__}}
                )
                await asyncio.sleep(1.0)

    async def follow_once(self) -> None:
        """Apply every change after the replica's position."""
        while True:
            # Read and applied under the writers' lock: a page read before a local write
            # (settings, an upsert, a delete) never lands after it, putting older state
            # back until the next page.
            async with self._lock:
                changes = await asyncio.to_thread(self.store.changes, self.seq, PAGE)
                if changes:
                    await self._apply(changes)
            if len(changes) < PAGE:
                return

    async def _apply(self, changes: list[Change]) -> None:
        # The stored vectors of the page's items first, so that each item and its vectors
        # go into the index in one write: a complete index stays complete while another
        # replica's writes are followed (searches and recommendations of a version do
        # not find it incomplete, and answer 503, for the moment in between).
        upserted: dict[tuple[str, str], list[str]] = {}
        for change in changes:
            key = (change.tenant_id, change.catalog)
            if change.item is None or (self.owns is not None and not self.owns(change.item_id)):
                continue
            if _changes_body(self.catalogs.get(key), change.item):  # else not applied
                upserted.setdefault(key, []).append(change.item_id)
        stored = {key: await self._stored_vectors(*key, ids) for key, ids in upserted.items()}
        # Index updates (BM25, graph inserts) take milliseconds per item: off the loop.
        await asyncio.to_thread(self._apply_changes, changes, stored)
        # The position moves once the changes are searchable, vectors included.
        self.seq = max(self.seq, changes[-1].seq)

    def _apply_changes(self, changes: list[Change], stored: dict[tuple[str, str], Vectors]) -> None:
        """Apply changes in order, each upserted item with its `stored` vectors; a
        catalog's consecutive upserts go to its index in one write (item by item, each
        BM25 write costs more as the catalog grows)."""
        pending: dict[tuple[str, str], list[Item]] = {}

        def flush(key: tuple[str, str]) -> None:
            if items := pending.pop(key, None):
                self._index_items(key, items, stored.get(key, {}))

        for change in changes:
            key = (change.tenant_id, change.catalog)
            index = self.catalogs.setdefault(key, CatalogIndex())
            if change.item is not None:
                if self.owns is not None and not self.owns(change.item_id):
                    continue  # another shard's
                if (unconfirmed := self._unconfirmed.get(key)) is not None:
                    unconfirmed.discard(change.item_id)
                if (problem := _unindexable(change.item)) is not None:
                    flush(key)  # its earlier versions first: this one replaces them
                    self._skip(key, change.item_id, problem)
                    continue
                if _changes_body(index, change.item):
                    pending.setdefault(key, []).append(change.item)
                continue
            flush(key)
            if change.item_id == CATALOG_CHANGE:
                index.settings = dict(change.settings or {})
            else:
                index.delete(change.item_id)
        for key in list(pending):
            flush(key)

    def _index_items(self, key: tuple[str, str], items: list[Item], vectors: Vectors) -> None:
        """Add or replace items with their vectors in one write; should that fail, item
        by item, an item that cannot be indexed logged and left out."""
        index = self.catalogs[key]
        try:
            index.upsert_many(items, vectors)
        except Exception:
            for item in items:
                own = {space: {item.id: v[item.id]} for space, v in vectors.items() if item.id in v}
                try:
                    index.upsert_many([item], own)
                except Exception as e:
                    self._skip(key, item.id, f"{type(e).__name__}: {str(e)[:200]}")

    def _skip(self, key: tuple[str, str], item_id: str, problem: str) -> None:
        """Leave out a stored item this replica cannot index (written before the store
        refused such items, or by another writer): not searchable, instead of a replica
        that cannot start. Its older version, if indexed, goes too."""
        self.catalogs[key].delete(item_id)
        tenant, catalog = key
        self.log.error(
            "catalog item not indexed",
            extra={"fields": {"tenant": tenant, "catalog": catalog, "item": item_id[:256],
                              "problem": problem}},
        )  # fmt: skip

    async def _stored_vectors(self, tenant: str, catalog: str, ids: list[str]) -> Vectors:
        """The stored vectors of items about to be applied, in every kept space; an item a
        space has none for (its writer's embedding failed, or it was stored without)
        is embedded by a backfill, which the follower starts within `BACKFILL_RETRY_S`."""
        out: Vectors = {}
        for space in self.spaces:
            stored = out[space] = await asyncio.to_thread(
                self._read_stored, tenant, catalog, space, ids
            )
            if len(stored) < len(set(ids)):
                self._backfill_due = True
        return out

    async def backfill(self, delay_s: float = 0.0) -> None:
        """Embed what each kept space lacks (stored vectors first), in batches, after
        `delay_s`, once the stored vectors being read are in."""
        await asyncio.sleep(delay_s)
        if self._loads:
            await asyncio.wait(list(self._loads))
        try:
            for (tenant, catalog), index in list(self.catalogs.items()):
                for space in list(self.spaces):
                    await self._backfill(tenant, catalog, index, space)
        except Exception as e:
            self._backfill_due = True
            self.log.warning("backfill stopped", extra={"fields": {"error": type(e).__name__}})

    async def _backfill(self, tenant: str, catalog: str, index: CatalogIndex, space: str) -> None:
        """Embed what `space` lacks in small batches, yielding to live traffic: each
        batch first takes what another replica already stored, and the embedding runs
        at most `BACKFILL_DUTY` of the time."""
        missing = index.missing(space)
        if not missing:
            return
        started, embedded = time.monotonic(), 0
        cheap = self._item_space(space)
        size = ITEM_MODEL_BATCH if cheap else BACKFILL_BATCH
        for start in range(0, len(missing), size):
            if space not in self.spaces:
                break  # no longer kept: nothing more goes into its index
            batch = missing[start : start + size]
            ids = [i.id for i in batch]
            async with self._lock:  # the writers' lock: no apply in between
                stored = await asyncio.to_thread(self._read_stored, tenant, catalog, space, ids)
                index.set_vectors(space, stored)
            batch = [i for i in batch if i.id not in stored]
            if not batch:
                continue
            while not cheap and self.idle is not None and not self.idle(space):
                await asyncio.sleep(IDLE_POLL_S)  # live requests first
            took = time.monotonic()
            vectors = await self._vectors(tenant, space, batch)
            took = 0.0 if cheap else time.monotonic() - took
            embedded += await self._keep_vectors(tenant, catalog, index, space, batch, vectors)
            await asyncio.sleep(took * (1 / BACKFILL_DUTY - 1))
        seconds = round(time.monotonic() - started, 2)
        fields = {"tenant": tenant, "catalog": catalog, "space": space, "embedded": embedded}
        self.log.info("index backfilled", extra={"fields": {**fields, "seconds": seconds}})

    async def _keep_vectors(
        self,
        tenant: str,
        catalog: str,
        index: CatalogIndex,
        space: str,
        items: list[Item],
        vectors: npt.NDArray[np.float32],
    ) -> int:
        """Store and index the vectors a backfill made of `items`, each only while the
        item is still what was embedded, in the store and here (an upsert during the
        embedding brought its own vectors): how many were kept."""
        made_from = {item.id: item for item in items}
        by_id = {item.id: vectors[n] for n, item in enumerate(items)}
        blobs = {i: v.astype(np.float32).tobytes() for i, v in by_id.items()}
        async with self._lock:
            written = await asyncio.to_thread(
                self.store.put_vectors, tenant, catalog, self.stored_space(space), blobs, made_from
            )
            current = {i: index.get(i) for i in written}
            kept = {
                i: by_id[i]
                for i, item in current.items()
                if item is not None and same_body(item, made_from[i])
            }
            index.set_vectors(space, kept)
        return len(kept)

    def _read_stored(
        self, tenant: str, catalog: str, space: str, ids: list[str]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """The vectors of `space` the store holds for these items, by id (a store round
        trip: call it in a thread)."""
        stored = self.store.get_vectors(tenant, catalog, self.stored_space(space), ids)
        return {i: np.frombuffer(b, dtype=np.float32) for i, b in stored.items()}

    def stored_space(self, space: str) -> str:
        """The name of `space`'s vectors in the store: the space and the first 12 hex
        digits of the artifact that made them (`space_artifacts`), as the embedding
        cache names its spaces. Vectors made by another artifact under the same version
        name (a rebuilt example model, a manifest applied around the immutability
        check) are then never read as this artifact's: its index is embedded again
        instead of mixing two models' vectors. A space without a known artifact keeps
        its bare name."""
        return stored_space(space, self.space_artifacts.get(space))

    # ---- what the routes call ----------------------------------------------------

    def _item_space(self, space: str) -> bool:
        return self.item_model is not None and space.startswith(f"{self.item_model[0]}/")

    async def _vectors(self, tenant: str, space: str, items: list[Item]) -> npt.NDArray[np.float32]:
        """Vectors of items in one space: by the item model, or the texts embedded."""
        if self.item_model is not None and self._item_space(space):
            return await asyncio.to_thread(self.item_model[1], space, items)
        return await self.embed(tenant, space, [item_text(i) for i in items])

    async def upsert(self, tenant: str, catalog: str, items: list[Item]) -> int:
        """Embed for every kept space, store items and vectors (one transaction: a
        follower that sees the items sees their vectors), apply here; the seq."""
        vectors = await self._embed_all(tenant, items)
        blobs = {
            self.stored_space(space): {
                item.id: matrix[n].astype(np.float32).tobytes() for n, item in enumerate(items)
            }
            for space, matrix in vectors.items()
        }
        # Written and applied under the writers' lock, as `delete` and `configure`: this
        # replica applies its own writes in the store's order, so a delete that commits
        # after this upsert is never undone here by the upsert's apply.
        async with self._lock:
            seq = await asyncio.to_thread(self.store.upsert, tenant, catalog, items, blobs)
            await asyncio.to_thread(self._apply_upsert, tenant, catalog, items, vectors)
        return seq

    def _apply_upsert(
        self,
        tenant: str,
        catalog: str,
        items: list[Item],
        vectors: dict[str, npt.NDArray[np.float32]],
    ) -> None:
        index = self.catalogs.setdefault((tenant, catalog), CatalogIndex())
        mine = [n for n, item in enumerate(items) if self.owns is None or self.owns(item.id)]
        if not mine:
            return
        index.upsert_many(
            [items[n] for n in mine],
            {space: {items[n].id: matrix[n] for n in mine} for space, matrix in vectors.items()},
        )

    async def _embed_all(
        self, tenant: str, items: list[Item]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Vectors in every kept space that answers; a failing one (a misbehaving
        canary) is backfilled later, and searches skip it until then. Fails only when
        no space answers."""
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        error: Exception | None = None
        for space in self.spaces:
            try:
                vectors[space] = await self._vectors(tenant, space, items)
            except Exception as e:
                error = e
                self._backfill_due = True
                self.log.warning(
                    "embedding for the index failed; backfilled later",
                    extra={"fields": {"space": space, "error": type(e).__name__}},
                )
        if error is not None and not vectors:
            raise error
        return vectors

    async def configure(self, tenant: str, catalog: str, settings: dict[str, Any]) -> int:
        """Replace a catalog's settings (the store first, then here); the seq."""
        # Under the writers' lock, as the follower reads and applies its pages.
        async with self._lock:
            seq = await asyncio.to_thread(self.store.configure, tenant, catalog, settings)
            self.catalogs.setdefault((tenant, catalog), CatalogIndex()).settings = dict(settings)
        return seq

    def catalogs_of(self, tenant: str) -> list[str]:
        """The names of the tenant's catalogs this replica holds, sorted."""
        if self._by_tenant_of != len(self.catalogs):
            keys = list(self.catalogs)  # one step: a follower may add one meanwhile
            by_tenant: dict[str, list[str]] = {}
            for owner, name in keys:
                by_tenant.setdefault(owner, []).append(name)
            self._by_tenant = {owner: sorted(names) for owner, names in by_tenant.items()}
            self._by_tenant_of = len(keys)
        return self._by_tenant.get(tenant, [])

    def catalog_settings(self, tenant: str, catalog: str) -> dict[str, Any]:
        """A catalog's settings as this replica holds them (empty: none, or no catalog)."""
        index = self.catalogs.get((tenant, catalog))
        return index.settings if index is not None else {}

    async def delete(self, tenant: str, catalog: str, item_id: str) -> bool:
        """Delete one item (the store first); False when there was none."""
        # Under the writers' lock: after any page the follower read before the delete,
        # and in the store's order with this replica's upserts.
        async with self._lock:
            seq = await asyncio.to_thread(self.store.delete, tenant, catalog, item_id)
            index = self.catalogs.get((tenant, catalog))
            if index is not None:
                index.delete(item_id)
        return seq is not None

    async def get(self, tenant: str, catalog: str, item_id: str) -> Item | None:
        """One item, from the store (the source of truth)."""
        return await asyncio.to_thread(self.store.get, tenant, catalog, item_id)

    def pending(self, tenant: str | None = None) -> dict[str, int]:
        """Per kept space, items still without a vector, of every catalog (or only of
        `tenant`'s)."""
        out = dict.fromkeys(self.spaces, 0)
        if self.shards is not None:
            for row in self.shards.indexes(tenant):
                for space in self.spaces:
                    out[space] += max(0, row["items"] - row["indexes"][space]["vectors"])
            return out
        for (owner, _), index in list(self.catalogs.items()):
            if tenant is not None and owner != tenant:
                continue
            for space in self.spaces:
                out[space] += max(0, len(index) - len(index.with_vector.get(space, ())))
        return out

    def _retained_left(self) -> dict[str, int]:
        """Each retained space and the seconds until its indexes are dropped."""
        now = time.monotonic()
        return {s: max(0, round(until - now)) for s, until in sorted(self.retained.items())}

    def indexes(self, tenant: str | None) -> list[dict[str, Any]]:
        """Every catalog (of `tenant`, or all) with each kept space's completeness, and
        each retained space's, with `retained_s`: the seconds until it is dropped."""
        if self.shards is not None:
            return self.shards.indexes(tenant)
        retained = self._retained_left()
        rows = []
        for (owner, catalog), index in sorted(self.catalogs.items()):
            if tenant is not None and owner != tenant:
                continue
            spaces = {
                space: {
                    "vectors": len(index.with_vector.get(space, ())),
                    "complete": index.complete(space),
                }
                for space in self.spaces
            }
            for space, left in retained.items():
                spaces[space] = {
                    "vectors": len(index.with_vector.get(space, ())),
                    "complete": index.complete(space),
                    "retained_s": left,
                }
            rows.append({"tenant_id": owner, "catalog": catalog, "items": len(index),
                         "indexes": spaces})  # fmt: skip
        return rows

    def stored_counts(self, space: str, tenant: str | None) -> dict[tuple[str, str], int]:
        """Per (tenant, catalog): the vectors of `space` the store holds (what an index
        of it reloads at once, without embedding); every tenant's, or `tenant`'s."""
        return self.store.count_vectors(self.stored_space(space), tenant)

    def ready_spaces(self, tenant: str, catalog: str) -> list[str]:
        """Kept spaces whose index of this catalog is complete (on every shard)."""
        if self.shards is not None:
            return self.shards.ready_spaces(tenant, catalog)
        index = self.catalogs.get((tenant, catalog))
        if index is None:
            return list(self.spaces)
        return [s for s in self.spaces if index.complete(s)]

    def complete_spaces(self, tenant: str, catalog: str) -> list[str]:
        """Every space with a complete index of this catalog that a search may fall
        back on: the kept ones (`ready_spaces`), then the retained ones."""
        if self.shards is not None:
            return self.shards.complete_spaces(tenant, catalog)
        ready = self.ready_spaces(tenant, catalog)
        index = self.catalogs.get((tenant, catalog))
        if index is None:
            return ready
        return ready + [s for s in sorted(self.retained) if index.complete(s)]

    def search(
        self,
        tenant: str,
        catalog: str,
        space: str,
        vector: npt.NDArray[np.float32] | None,
        text: str,
        k: int,
        filters: dict[str, Any] | None,
        hybrid: bool,
        fusion: str = "convex",
    ) -> SearchResult:
        """The k best items of the catalog in `space` (empty for an unknown catalog)."""
        index = self.catalogs.get((tenant, catalog))
        if index is None:
            if filters:
                AttributeColumns().mask(filters, 0)  # the same 400s as for a catalog
            return SearchResult(space, [], self.seq)
        hits = index.search(space, vector, text, k, filters, hybrid, fusion)
        return SearchResult(space, hits, self.seq)

    async def query(self, q: SearchQuery) -> SearchResult:
        """`search`, or on a sharded catalog, every shard's answer merged."""
        if self.shards is None:
            return self.search(
                q.tenant, q.catalog, q.space, q.vector, q.text, q.k, q.filters, q.hybrid, q.fusion
            )
        if q.filters:
            AttributeColumns().mask(q.filters, 0)  # a bad filter is the caller's 400, here
        return SearchResult(q.space, await self.shards.search(q), self.shards.seq)

    def candidates(
        self, q: SearchQuery, stats: CorpusStats | None, generation: int | None = None
    ) -> Candidates:
        """A shard's part of a search: each half's best items, before fusion. With
        `generation` (what `term_stats_at` said when the ingress read this shard's part
        of `stats`), a shard that has moved on since answers `stale` instead of BM25."""
        index = self.catalogs.get((q.tenant, q.catalog))
        if index is not None:
            return index.candidates(q, stats, generation)
        if generation is None or generation == ABSENT or not q.hybrid:
            return Candidates([], [])
        return Candidates([], [], (ABSENT, None))

    def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None:
        """A shard's part of a query's BM25 statistics (None: no such catalog here)."""
        index = self.catalogs.get((tenant, catalog))
        return None if index is None else index.term_stats(text)

    def term_stats_at(self, tenant: str, catalog: str, text: str) -> tuple[int, CorpusStats | None]:
        """`term_stats` and the generation they were read at (`ABSENT`, None: no such
        catalog here), which `candidates` checks."""
        index = self.catalogs.get((tenant, catalog))
        return (ABSENT, None) if index is None else index.term_stats_at(text)

    def status(self) -> dict[str, Any]:
        """A shard's answer to the ingress's sync: position, complete spaces (kept, and
        retained: `retained` says until when, in seconds left)."""
        catalogs = list(self.catalogs.items())
        retained = self._retained_left()
        ready = {
            catalog_key(tenant, catalog): [s for s in self.spaces if index.complete(s)]
            for (tenant, catalog), index in catalogs
        }
        retained_ready = {
            catalog_key(tenant, catalog): [s for s in retained if index.complete(s)]
            for (tenant, catalog), index in catalogs
        }
        sizes = {
            catalog_key(tenant, catalog): {
                "items": len(index),
                "vectors": {
                    s: len(index.with_vector.get(s, ())) for s in [*self.spaces, *retained]
                },
            }
            for (tenant, catalog), index in catalogs
        }
        return {"seq": self.seq, "ready": ready, "sizes": sizes, "retained": retained,
                "retained_ready": retained_ready, "stats_generations": True}  # fmt: skip

    async def close(self) -> None:
        """Stop following (and reading returning spaces' stored vectors)."""
        for load in list(self._loads):
            load.cancel()
        if self._task is not None:
            self._task.cancel()
        if self.shards is not None:
            await self.shards.close()
