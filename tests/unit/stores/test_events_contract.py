"""The `EventLog` contract: the same tests on SQLite (a file in tmp_path) and on a real
PostgreSQL server, in the registry's database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from stores.events import Event, EventLog
from stores.events_sql import SqlEventLog, metadata, open_event_log
from stores.registry_sql import VERSION_TABLE

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def log(url: str) -> Iterator[SqlEventLog]:
    """A migrated event log on `url`."""
    s = open_event_log(url)
    yield s
    s.close()


def ev(user: str, item: str, kind: str = "view", minutes: int = 0) -> Event:
    return Event(user, item, kind, T0 + timedelta(minutes=minutes), "shop")


def test_sql_event_log_is_an_event_log(log: SqlEventLog) -> None:
    el: EventLog = log  # checked by mypy
    assert el.scan("tn_a", 0, 10) == []
    assert el.append("tn_a", []) == 0


def test_append_then_scan_in_order_with_what_was_sent(log: SqlEventLog) -> None:
    before = datetime.now(UTC)
    first = log.append("tn_a", [ev("u1", "i1"), ev("u1", "i2", "click", 1)])
    last = log.append("tn_a", [ev("u2", "i1", "purchase", 2)])
    assert last > first > 0
    got = log.scan("tn_a", 0, 10)
    assert [s.seq for s in got] == sorted(s.seq for s in got)
    assert got[-1].seq == last
    assert [s.event for s in got] == [
        ev("u1", "i1"), ev("u1", "i2", "click", 1), ev("u2", "i1", "purchase", 2)
    ]  # fmt: skip
    assert all(s.tenant_id == "tn_a" and s.received_at >= before - timedelta(seconds=1)
               for s in got)  # fmt: skip
    assert got[0].event.at.tzinfo == UTC
    assert [s.event.item for s in log.scan("tn_a", got[0].seq, 1)] == ["i2"]


def test_a_users_newest_events_first(log: SqlEventLog) -> None:
    log.append("tn_a", [ev("u1", f"i{n}", minutes=n) for n in range(5)])
    log.append("tn_a", [ev("u2", "other")])
    assert [s.event.item for s in log.for_user("tn_a", "u1", 3)] == ["i4", "i3", "i2"]
    assert log.for_user("tn_a", "nobody", 3) == []


def test_tenants_never_see_each_others_events(log: SqlEventLog) -> None:
    log.append("tn_a", [ev("u1", "i1")])
    log.append("tn_b", [ev("u1", "i9")])
    assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["i1"]
    assert [s.event.item for s in log.for_user("tn_b", "u1", 10)] == ["i9"]


def test_bad_events_are_refused_whole(log: SqlEventLog) -> None:
    with pytest.raises(ValueError, match="type"):
        log.append("tn_a", [ev("u1", "i1"), ev("u1", "i2", "like")])
    with pytest.raises(ValueError, match="ids"):
        log.append("tn_a", [ev("", "i1")])
    with pytest.raises(ValueError, match="naive"):
        log.append("tn_a", [Event("u1", "i1", "view", datetime(2026, 1, 1))])
    # PostgreSQL's text holds no NUL: refused alike on both (it had been a store failure
    # there, which a retry never gets past), and looked up as nothing.
    with pytest.raises(ValueError, match="NUL"):
        log.append("tn_a", [ev("u1", "i1"), ev("u\x00", "i1")])
    with pytest.raises(ValueError, match="NUL"):
        log.append("tn\x00", [ev("u1", "i1")])
    assert log.scan("tn_a", 0, 10) == []
    assert log.for_user("tn_a", "u\x00", 5) == []
    assert log.scan("tn\x00", 0, 10) == []


def test_concurrent_appends_lose_nothing(log: SqlEventLog) -> None:
    returned: dict[int, tuple[str, str]] = {}

    def writer(n: int) -> None:
        for k in range(5):
            seq = log.append("tn_a", [ev(f"u{n}", f"i{k}"), ev(f"u{n}", f"j{k}")])
            returned[seq] = (f"u{n}", f"j{k}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = log.scan("tn_a", 0, 1000)
    assert len(got) == 40
    assert len({s.seq for s in got}) == 40
    # each append answered the seq of its own batch's last event
    assert {s.seq: (s.event.user, s.event.item) for s in got if s.seq in returned} == returned


def test_a_reader_tailing_the_log_never_skips_an_event(log: SqlEventLog) -> None:
    """Seqs of one tenant become visible in order: a reader that scans after the last
    seq it saw, while appends run concurrently, sees every event exactly once."""
    done = threading.Event()
    seen: list[int] = []

    def writer(n: int) -> None:
        for k in range(25):
            log.append("tn_a", [ev(f"u{n}", f"i{k}")])
            log.append("tn_b", [ev(f"u{n}", f"i{k}")])

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            batch = log.scan("tn_a", last, 1000)
            seen.extend(s.seq for s in batch)
            last = batch[-1].seq if batch else last
            if finished and not batch:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert len(seen) == len(set(seen)) == 100
    assert seen == sorted(seen)


def test_migration_matches_the_table_the_code_uses(log: SqlEventLog) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def ours(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name in metadata.tables

    with log._engine.connect() as conn:
        opts = {"version_table": VERSION_TABLE, "include_name": ours}
        context = MigrationContext.configure(conn, opts=opts)
        diff = [d for d in compare_metadata(context, metadata) if d[0] != "remove_index"]
        assert diff == []


def test_a_database_that_does_not_answer_is_unavailable() -> None:
    from stores.events import EventLogUnavailable
    from tests.conftest import free_port

    log = SqlEventLog(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(EventLogUnavailable, match="event log failed: OperationalError"):
            log.append("tn_a", [ev("u1", "i1")])
    finally:
        log.close()


def test_popular_items_weigh_each_event_type_within_the_window(log: SqlEventLog) -> None:
    weights = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
    log.append("tn_a", [ev("u1", "old", "purchase", minutes=-120)])
    log.append(
        "tn_a",
        [ev("u1", "viewed", "view"), ev("u2", "viewed", "view"), ev("u3", "viewed", "view"),
         ev("u1", "bought", "purchase"), ev("u2", "clicked", "click"),
         ev("u3", "tie-b", "click"), ev("u3", "tie-a", "click")],
    )  # fmt: skip
    log.append("tn_b", [ev("u1", "other-tenant", "purchase")])
    since = T0 - timedelta(minutes=60)
    got = log.popular("tn_a", since, weights, 10)
    assert got == [("bought", 8.0), ("viewed", 3.0), ("clicked", 2.0), ("tie-a", 2.0),
                   ("tie-b", 2.0)]  # fmt: skip
    assert log.popular("tn_a", since, weights, 2) == got[:2]
    assert log.popular("tn_a", T0 - timedelta(hours=3), weights, 1) == [("bought", 8.0)]
    assert [i for i, _ in log.popular("tn_a", T0 - timedelta(hours=3), weights, 10)].count(
        "old"
    ) == 1
    assert log.popular("tn_c", since, weights, 10) == []


def test_popular_items_of_one_catalog(log: SqlEventLog) -> None:
    """A catalog's popular items: its events and those that named no catalog, never
    another catalog's (whose items would fill the list and leave it nothing)."""
    weights = {"view": 1.0, "purchase": 8.0}
    at = T0 - timedelta(minutes=1)
    log.append(
        "tn_a",
        [Event("u1", "shoe", "view", at, "shop"), Event("u1", "mug", "purchase", at, "kitchen"),
         Event("u2", "sock", "view", at, None), Event("u2", "shoe", "view", at, "shop")],
    )  # fmt: skip
    since = T0 - timedelta(minutes=60)
    assert log.popular("tn_a", since, weights, 10, "shop") == [("shoe", 2.0), ("sock", 1.0)]
    assert log.popular("tn_a", since, weights, 10, "kitchen") == [("mug", 8.0), ("sock", 1.0)]
    assert [i for i, _ in log.popular("tn_a", since, weights, 10)] == ["mug", "shoe", "sock"]
    assert log.popular("tn_b", since, weights, 10, "shop") == []
    assert log.popular("tn_a", since, {}, 10, "shop") == []  # nothing weighs anything
    assert log.popular("tn_a", since, {"view": 0.0}, 10) == []
