"""`servekit features materialize`: a Parquet file of interactions folded into the online
store the service reads (the embedded SQLite file, or Redis when the secret names one),
with affinities from the tenant's catalog; rows it cannot use are named and skipped."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deployments.pipelines.features_wiring import embedded_path
from servekit.cli import main
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from stores.features import OnlineStore, RowKey
from stores.features_redis import RedisFeatureStore
from stores.features_sqlite import SqliteFeatureStore

NOW = time.time()


def write(path: Path, rows: list[dict[str, Any]], **types: pa.DataType) -> Path:
    names = ["user", "item", "type", "timestamp"]
    schema = pa.schema([(n, types.get(n, pa.string())) for n in names if n in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An embedded registry of this test's own, with a catalog of tenant tn_a."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("SERVEKIT_REGISTRY_DSN", url)
    store = open_catalog_store(url)
    store.upsert(
        "tn_a",
        "shop",
        [
            Item("boot", {"title": "Boot", "brand": "Acme"}, {"category": "shoes"}),
            Item("sock", {"title": "Sock"}, {"category": "socks", "brand": "Globex"}),
        ],
    )
    store.close()
    return url


def history(n: int = 30) -> list[dict[str, Any]]:
    kinds = ["view", "click", "add_to_cart", "purchase"]
    return [
        {"user": f"u{i % 3}", "item": ["boot", "sock"][i % 2], "type": kinds[i % 4],
         "timestamp": NOW - 3600 + i}
        for i in range(n)
    ]  # fmt: skip


def read(store: OnlineStore, *keys: RowKey) -> list[Any]:
    async def body() -> list[Any]:
        try:
            return await store.read(list(keys))
        finally:
            await store.close()

    return asyncio.run(body())


def test_materialize_into_the_embedded_store(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "h.parquet", history(), timestamp=pa.float64())
    assert (
        main(["features", "materialize", str(path), "--tenant", "tn_a", "--catalog", "shop"]) == 0
    )
    out = capsys.readouterr().out
    assert "materialized 30 events of tenant tn_a into 5 rows (3 users, 2 items)" in out
    u0, boot, other = read(
        SqliteFeatureStore(embedded_path(registry)),
        RowKey("tn_a", "user_activity", "u0"),
        RowKey("tn_a", "item_popularity", "boot"),
        RowKey("tn_b", "user_activity", "u0"),
    )
    assert u0["events"] == 10
    assert u0["recent_items"] == ["sock", "boot"]
    assert u0["category_affinity:shoes"] > 0
    assert u0["brand_affinity:Acme"] > 0  # a text field where no attribute has the name
    assert boot["events"] == 15
    assert other is None


def test_materialize_into_redis_with_timestamps_and_skipped_rows(
    registry: str,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SERVEKIT_FEATURES_REDIS_URL", redis_url)
    user = f"u-{uuid.uuid4().hex[:8]}"
    rows = [
        {"user": user, "item": "boot", "type": "purchase", "timestamp": pa.scalar(
            int((NOW - 60) * 1e6), pa.timestamp("us", tz="UTC")).as_py()},
        {"user": user, "item": "sock", "type": "like", "timestamp": None},
        {"user": "", "item": "sock", "type": "view", "timestamp": None},
    ]  # fmt: skip
    path = write(tmp_path / "h.parquet", rows, timestamp=pa.timestamp("us", tz="UTC"))
    assert main(["features", "materialize", str(path), "--tenant", "tn_a"]) == 0
    out = capsys.readouterr().out
    assert "materialized 1 events" in out
    assert "skipped 2 rows: row 1: type: expected one of" in out
    assert "row 2: user: expected 1 to 256 characters" in out
    (row,) = read(RedisFeatureStore(redis_url), RowKey("tn_a", "user_activity", user))
    assert row["purchases"] == 1
    assert row["last_purchase_at"] == pytest.approx(NOW - 60, abs=1e-3)


def test_a_file_without_a_column_or_not_parquet_is_refused(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "h.parquet", [{"user": "u", "item": "i", "type": "view"}])
    assert main(["features", "materialize", str(path), "--tenant", "tn_a"]) == 1
    assert "no column 'timestamp'" in capsys.readouterr().err
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    assert main(["features", "materialize", str(junk), "--tenant", "tn_a"]) == 1
    assert "not a Parquet file" in capsys.readouterr().err
    assert main(["features", "materialize", str(tmp_path / "none"), "--tenant", "tn_a"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_rebuild_from_the_event_log_after_redis_lost_its_data(
    registry: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import UTC, datetime

    from stores.events import Event
    from stores.events_sql import open_event_log

    monkeypatch.setenv("SERVEKIT_FEATURES_REDIS_URL", redis_url)
    user = f"u-{uuid.uuid4().hex[:8]}"
    at = datetime.now(UTC)
    log = open_event_log(registry)
    log.append("tn_a", [Event(user, "boot", "purchase", at, "shop"),
                        Event(user, "sock", "view", at, "shop")])  # fmt: skip
    log.append("tn_b", [Event(user, "boot", "view", at, None)])
    log.close()
    assert main(["features", "rebuild", "--tenant", "tn_a"]) == 0
    assert "materialized 2 events of tenant tn_a into 3 rows" in capsys.readouterr().out
    mine, theirs = read(
        RedisFeatureStore(redis_url),
        RowKey("tn_a", "user_activity", user),
        RowKey("tn_b", "user_activity", user),
    )
    assert (mine["purchases"], mine["views"]) == (1, 1)
    assert mine["category_affinity:shoes"] == 8
    assert mine["recent_items"] == ["sock", "boot"]
    assert theirs is None


def test_rebuild_keeps_events_merged_online_between_its_scan_and_its_write(
    registry: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replica appends and merges events after the rebuild read the log, before it
    replaces the rows (which wipes what those merges did): the rebuild merges them again
    into the rows it wrote, and leaves the rows it did not write alone."""
    import logging
    from datetime import UTC, datetime

    from configs.features import load_definitions
    from deployments.pipelines.features import FeatureService
    from stores.events import Event
    from stores.events_sql import open_event_log

    at = datetime.now(UTC)
    path = embedded_path(registry)
    log = open_event_log(registry)
    log.append("tn_a", [Event("u1", "boot", "purchase", at, "shop")])
    replica = FeatureService(
        load_definitions(), SqliteFeatureStore(path), log, None, logging.getLogger("test")
    )
    late = [Event("u1", "sock", "view", at, "shop"), Event("u2", "boot", "click", at, "shop")]
    replace = SqliteFeatureStore.replace

    async def after_the_scan(store: SqliteFeatureStore, rows: Any) -> None:
        if late:
            await replica.ingest("tn_a", late[:], None)
            late.clear()
        await replace(store, rows)

    monkeypatch.setattr(SqliteFeatureStore, "replace", after_the_scan)
    assert main(["features", "rebuild", "--tenant", "tn_a"]) == 0
    asyncio.run(replica.close())
    u1, u2, boot, sock = read(
        SqliteFeatureStore(path),
        RowKey("tn_a", "user_activity", "u1"),
        RowKey("tn_a", "user_activity", "u2"),
        RowKey("tn_a", "item_popularity", "boot"),
        RowKey("tn_a", "item_popularity", "sock"),
    )
    assert (u1["events"], u1["purchases"], u1["views"]) == (2, 1, 1)
    assert u1["recent_items"] == ["sock", "boot"]
    assert u1["category_affinity:socks"] == 1  # the late item's attributes, from its catalog
    assert (u2["events"], u2["clicks"]) == (1, 1)  # not written by the rebuild: once
    assert (boot["events"], sock["events"]) == (2, 1)
    out = capsys.readouterr().out
    assert "materialized 1 events of tenant tn_a into 2 rows" in out
    assert "2 events arrived meanwhile: merged again" in out
