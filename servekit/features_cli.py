"""`servekit features materialize FILE.parquet --tenant T`: batch materialization of a
history of interactions into the online store the service reads (the `features_redis_url`
secret's Redis, else the embedded SQLite file beside the embedded registry).
`servekit features rebuild --tenant T` does the same from the durable event log (every
event `POST /v1/events` acknowledged), e.g. after Redis lost its data.

The file holds one interaction a row: `user`, `item`, `type` (view, click, add_to_cart,
purchase) and `timestamp` (a Parquet timestamp, UTC when it has no zone, or Unix
seconds). Every row of the file is folded into whole rows, as events would have built
them, and each user's and item's row is replaced. With `--catalog`, affinities and sums
read the items' attributes from the tenant's catalog. Reading Parquet needs pyarrow
(`pip install 'servekit[features]'`; the development install has it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stores.events import EVENT_TYPES, Event, EventLog

COLUMNS = ("user", "item", "type", "timestamp")
BATCH_ROWS = 65_536
WRITE_ROWS = 2_000  # rows per store call


class MaterializeError(Exception):
    """A file or option that cannot be materialized; the message says why."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`features materialize`."""
    features = sub.add_parser("features", help="online features (definitions, materialize)")
    verbs = features.add_subparsers(dest="verb", required=True)
    make = verbs.add_parser(
        "materialize", help="fold a Parquet file of interactions into the online store"
    )
    make.add_argument("parquet", type=Path, help="columns: user, item, type, timestamp")
    make.add_argument("--tenant", required=True, help="whose users and items they are")
    make.add_argument("--catalog", help="the tenant's catalog holding the items' attributes")
    make.add_argument(
        "--definitions", help="feature definitions file (default: configs/features.yaml)"
    )
    rebuild = verbs.add_parser(
        "rebuild", help="rebuild a tenant's online rows from the event log (after a data loss)"
    )
    rebuild.add_argument("--tenant", required=True)
    rebuild.add_argument(
        "--catalog", help="the catalog of the items' attributes (default: each event's own)"
    )
    rebuild.add_argument("--definitions", help="feature definitions file")


def run(args: argparse.Namespace) -> int:
    """Run `features materialize` or `rebuild`; 0 when done, 1 with a message when not."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if args.verb == "rebuild":
            report = asyncio.run(rebuild(args.tenant, args.catalog, args.definitions))
        else:
            path, definitions = args.parquet, args.definitions
            report = asyncio.run(materialize(path, args.tenant, args.catalog, definitions))
    except MaterializeError as e:
        print(f"servekit features {args.verb}: {e}", file=sys.stderr)
        return 1
    except SQLAlchemyError as e:  # the event log or the catalog: a line, not a traceback
        # Its first line names the server, never the password; the rest is SQL.
        first = (str(e).splitlines() or [type(e).__name__])[0]
        print(
            f"servekit features {args.verb}: the registry's database did not answer "
            f"({first}); run it again once it does",
            file=sys.stderr,
        )
        return 1
    print(report)
    return 0


async def materialize(
    path: Path, tenant: str, catalog: str | None, definitions_path: str | None
) -> str:
    """Read, fold and write; a one-line report."""
    started = time.perf_counter()
    events, skipped = read_events(path)
    attrs = item_attributes(tenant, catalog, {e.item for e in events}) if catalog else {}
    return await write_rows(tenant, events, attrs, definitions_path, skipped, started)


async def rebuild(tenant: str, catalog: str | None, definitions_path: str | None) -> str:
    """The tenant's events from the log, folded and written; a one-line report. Events
    the log takes meanwhile are replayed into the rows written (see `write_rows`)."""
    from deployments.tenancy.access import registry_url
    from stores.events_sql import open_event_log
    from stores.secrets import load_secrets

    started = time.perf_counter()
    log = open_event_log(registry_url(load_secrets()))
    try:
        events, seq = _scan(log, tenant, 0)
        attrs: dict[str, dict[str, Any]] = {}
        _attributes(tenant, catalog, events, attrs)

        def later() -> tuple[list[Event], dict[str, dict[str, Any]]]:
            newer, _ = _scan(log, tenant, seq)
            _attributes(tenant, catalog, [e for e in newer if e.item not in attrs], attrs)
            return newer, attrs

        return await write_rows(tenant, events, attrs, definitions_path, [], started, later)
    finally:
        log.close()


def _scan(log: EventLog, tenant: str, after: int) -> tuple[list[Event], int]:
    """The tenant's events after seq `after`, read in pages to the log's end; the last
    seq read (`after` when none)."""
    events: list[Event] = []
    while page := log.scan(tenant, after, 10_000):
        events += [s.event for s in page]
        after = page[-1].seq
    return events, after


def _attributes(
    tenant: str, catalog: str | None, events: list[Event], attrs: dict[str, dict[str, Any]]
) -> None:
    """Add the attributes of the events' items to `attrs`, from `catalog` or else each
    event's own."""
    catalogs = {catalog} if catalog else {e.catalog for e in events if e.catalog}
    for name in sorted(catalogs):
        wanted = {e.item for e in events if catalog or e.catalog == name}
        attrs.update(item_attributes(tenant, name, wanted))


async def write_rows(
    tenant: str,
    events: list[Event],
    attrs: dict[str, dict[str, Any]],
    definitions_path: str | None,
    skipped: list[str],
    started: float,
    later: Callable[[], tuple[list[Event], dict[str, dict[str, Any]]]] | None = None,
) -> str:
    """Fold `events` into whole rows and replace them in the store; the report.

    `later`: the events the log took after `events` (with their items' attributes). A
    replica merges each event online just after appending it, so one merged after the
    scan but before its row is replaced is wiped by the replacement: after each batch of
    rows, every later event is read (to the log's end) and merged again into the rows
    just written. An event in the log by then whose online merge lands on the new row
    instead is counted twice by counts, sums and affinities (lists and times take it
    once); none is lost."""
    from configs.features import DefinitionsError, load_definitions
    from deployments.pipelines.features import FeatureService
    from deployments.pipelines.features_wiring import open_online_store
    from stores.features import FeatureStoreUnavailable

    try:
        definitions = load_definitions(definitions_path)
    except DefinitionsError as e:
        raise MaterializeError(str(e)) from e
    log = logging.getLogger("servekit.features")
    store = open_online_store(5.0, log)
    service = FeatureService(definitions, store, None, None, log)
    replayed = 0
    try:
        rows = service.rows(tenant, events, attrs)
        for at in range(0, len(rows), WRITE_ROWS):
            chunk = rows[at : at + WRITE_ROWS]
            await store.replace(chunk)
            if later is not None:
                newer, newer_attrs = await asyncio.to_thread(later)
                written = {key for key, _, _ in chunk}
                merges = service.merges(tenant, newer, newer_attrs)
                await store.merge([m for m in merges if m.key in written])
                replayed = max(replayed, len(newer))
    except FeatureStoreUnavailable as e:
        raise MaterializeError(str(e)) from e
    except ValueError as e:  # a tenant or id out of bounds
        raise MaterializeError(str(e)) from e
    finally:
        await store.close()
    where = getattr(store, "where", type(store).__name__)
    users = len({e.user for e in events})
    items = len({e.item for e in events})
    lines = [
        f"materialized {len(events)} events of tenant {tenant} into {len(rows)} rows "
        f"({users} users, {items} items) in {where} in {time.perf_counter() - started:.1f} s"
    ]
    if replayed:
        lines.append(f"{replayed} events arrived meanwhile: merged again into the rows written")
    if skipped:
        lines.append(f"skipped {len(skipped)} rows: {'; '.join(skipped[:5])}")
    return "\n".join(lines)


def read_events(path: Path) -> tuple[list[Event], list[str]]:
    """The file's interactions, and a reason per row left out (row number and field)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MaterializeError(
            "reading Parquet needs pyarrow: pip install 'servekit[features]'"
        ) from e
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError as e:
        raise MaterializeError(f"{path}: no such file") from e
    except Exception as e:  # pyarrow's errors for a file that is not Parquet
        raise MaterializeError(f"{path}: not a Parquet file ({type(e).__name__})") from e
    missing = [c for c in COLUMNS if c not in file.schema_arrow.names]
    if missing:
        raise MaterializeError(f"{path}: no column {missing[0]!r} (expected {', '.join(COLUMNS)})")
    events: list[Event] = []
    skipped: list[str] = []
    for n, row in enumerate(_rows(file)):
        try:
            events.append(_event(row))
        except ValueError as e:
            skipped.append(f"row {n}: {e}")
    return events, skipped


def _rows(file: Any) -> Iterator[dict[str, Any]]:
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=list(COLUMNS)):
        yield from batch.to_pylist()


def _event(row: dict[str, Any]) -> Event:
    user, item, kind, at = (row[c] for c in COLUMNS)
    for name, value in (("user", user), ("item", item)):
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ValueError(f"{name}: expected 1 to 256 characters")
    if kind not in EVENT_TYPES:
        raise ValueError(f"type: expected one of {', '.join(EVENT_TYPES)}")
    return Event(user, item, kind, _time(at))


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11:
        return datetime.fromtimestamp(value, UTC)
    raise ValueError("timestamp: expected a timestamp or Unix seconds")


def item_attributes(tenant: str, catalog: str, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The attributes (and text fields) of the wanted items of the tenant's catalog."""
    from deployments.pipelines.features import item_attributes as merged
    from deployments.tenancy.access import registry_url
    from stores.catalog_sql import open_catalog_store
    from stores.secrets import load_secrets

    store = open_catalog_store(registry_url(load_secrets()))
    found: dict[str, dict[str, Any]] = {}
    try:
        after: str | None = None
        while True:
            page = store.scan(tenant, catalog, after, 1000)
            for item in page:
                if item.id in wanted:
                    found[item.id] = merged(item.attributes, item.text)
            if len(page) < 1000:
                break
            after = page[-1].id
    finally:
        store.close()
    if not found and wanted:
        print(
            f"servekit features materialize: no item of the file is in catalog {catalog} "
            f"of tenant {tenant}: affinities and sums stay empty",
            file=sys.stderr,
        )
    return found
