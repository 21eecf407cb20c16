"""The `EventLog` contract for batches sent with a key (`append_once`), and for a commit
whose acknowledgement is lost: the same tests on SQLite and on a real PostgreSQL server.

A lost acknowledgement is made at the log's commit seam: the commit runs, then the
connection "breaks" (the driver's error, raised as the database's would be).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import OperationalError

from stores.events import (
    BATCH_RETENTION_S,
    BatchKey,
    BatchKeyReused,
    Event,
    EventLog,
    EventLogOutcomeUnknown,
    EventLogUnavailable,
)
from stores.events_sql import SqlEventLog

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OUTCOME = {"rejected": 1, "errors": [{"index": 2, "field": "events.2.type", "message": "m"}]}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class FlakyCommits(SqlEventLog):
    """A log whose next commits fail: `lose_ack` commits then raises (the answer lost on
    the way back), `refuse` raises without committing."""

    lose_ack = 0
    refuse = 0

    def _commit(self, tx: RootTransaction) -> None:
        if self.refuse:
            self.refuse -= 1
            tx.rollback()
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))
        tx.commit()
        if self.lose_ack:
            self.lose_ack -= 1
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(url: str, clock: Clock) -> Iterator[FlakyCommits]:
    """A migrated event log on `url`, on `clock`."""
    s = FlakyCommits(url, clock=clock)
    s.migrate()
    yield s
    s.close()


def batch(*items: str) -> list[Event]:
    return [Event("u1", item, "view", T0, "shop") for item in items]


def key(name: str = "req-1", content: str = "digest-a") -> BatchKey:
    return BatchKey(name, content)


def test_a_sql_event_log_keeps_batches_once(log: SqlEventLog) -> None:
    el: EventLog = log  # checked by mypy: the protocol has append_once and batch_merged
    first = el.append_once("tn_a", batch("i1", "i2"), key(), OUTCOME)
    assert (first.repeat, first.merge, first.accepted) == (False, True, 2)
    assert first.seq == first.first_seq + 1
    assert first.outcome == OUTCOME
    again = el.append_once("tn_a", batch("i1", "i2"), key(), {"ignored": True})
    assert (again.repeat, again.merge) == (True, False)  # the first call merges
    assert (again.seq, again.first_seq, again.accepted) == (first.seq, first.first_seq, 2)
    assert again.outcome == OUTCOME  # what the first stored, not what the repeat said
    assert [s.event.item for s in el.scan("tn_a", 0, 10)] == ["i1", "i2"]
    assert [s.seq for s in el.scan("tn_a", 0, 10)] == [first.first_seq, first.seq]


def test_keys_are_per_tenant_and_batches_without_one_are_plain(log: SqlEventLog) -> None:
    a = log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    b = log.append_once("tn_b", batch("i1"), key(), OUTCOME)
    assert (a.repeat, b.repeat) == (False, False)
    assert a.seq != b.seq
    log.append("tn_a", batch("i9"))
    log.append("tn_a", batch("i9"))  # no key: appended each time
    assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["i1", "i9", "i9"]
    assert [s.event.item for s in log.scan("tn_b", 0, 10)] == ["i1"]


def test_a_key_kept_with_another_batch_is_refused_and_appends_nothing(
    log: SqlEventLog,
) -> None:
    log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    with pytest.raises(BatchKeyReused):
        log.append_once("tn_a", batch("i2"), key(content="digest-b"), OUTCOME)
    assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["i1"]


def test_a_key_is_kept_for_the_retention_window(log: SqlEventLog, clock: Clock) -> None:
    first = log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    clock.now += timedelta(seconds=BATCH_RETENTION_S - 1)
    assert log.append_once("tn_a", batch("i1"), key(), OUTCOME).repeat
    clock.now += timedelta(seconds=2)  # past the window: the key is free again
    later = log.append_once("tn_a", batch("i2"), key(content="digest-b"), OUTCOME)
    assert not later.repeat
    assert later.seq > first.seq
    assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["i1", "i2"]


def test_a_batch_whose_merge_failed_is_merged_by_one_repeat(log: SqlEventLog) -> None:
    log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    log.batch_merged("tn_a", "req-1", False)  # the online store did not take them
    takes = [log.append_once("tn_a", batch("i1"), key(), OUTCOME) for _ in range(3)]
    assert [(t.repeat, t.merge) for t in takes] == [(True, True), (True, False), (True, False)]
    log.batch_merged("tn_a", "unknown", False)  # a key it does not keep: nothing to mark


def test_a_lost_acknowledgement_of_a_keyed_batch_is_found_again(log: FlakyCommits) -> None:
    """The connection breaks after the commit: the batch is looked up on another
    connection, found, and answered as appended; a retry is a repeat."""
    log.lose_ack = 1
    first = log.append_once("tn_a", batch("i1", "i2"), key(), OUTCOME)
    assert (first.repeat, first.merge, first.accepted) == (False, True, 2)
    retry = log.append_once("tn_a", batch("i1", "i2"), key(), OUTCOME)
    assert (retry.repeat, retry.merge, retry.seq) == (True, False, first.seq)
    assert len(log.scan("tn_a", 0, 10)) == 2


def test_a_failed_commit_of_a_keyed_batch_is_unavailable_and_safe_to_retry(
    log: FlakyCommits,
) -> None:
    log.refuse = 1
    with pytest.raises(EventLogUnavailable, match="not appended"):
        log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    assert log.scan("tn_a", 0, 10) == []
    retry = log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    assert (retry.repeat, retry.merge) == (False, True)
    assert len(log.scan("tn_a", 0, 10)) == 1


def test_a_failed_commit_without_a_key_is_an_unknown_outcome(log: FlakyCommits) -> None:
    """Without a key nothing tells a commit that happened from one that did not: both
    are `EventLogOutcomeUnknown`, never the `EventLogUnavailable` a client retries."""
    log.lose_ack = 1
    with pytest.raises(EventLogOutcomeUnknown, match="failed to commit"):
        log.append("tn_a", batch("kept"))
    log.refuse = 1
    with pytest.raises(EventLogOutcomeUnknown):
        log.append("tn_a", batch("not kept"))
    assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["kept"]


def test_a_repeats_lost_acknowledgement_still_answers(log: FlakyCommits) -> None:
    log.append_once("tn_a", batch("i1"), key(), OUTCOME)
    log.lose_ack = 1  # a repeat writes nothing of its own: its answer stands
    assert log.append_once("tn_a", batch("i1"), key(), OUTCOME).repeat
    log.batch_merged("tn_a", "req-1", False)
    log.lose_ack = 1  # one taking over the merge is not sure it did: retried, not merged
    with pytest.raises(EventLogUnavailable):
        log.append_once("tn_a", batch("i1"), key(), OUTCOME)


def test_concurrent_repeats_append_once(log: SqlEventLog) -> None:
    """Eight copies of one batch at once (a client's retries racing the first): one
    appends, the others wait for its commit and find it."""
    answers = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        got = log.append_once("tn_a", batch("i1", "i2", "i3"), key(), OUTCOME)
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.repeat for a in answers) == [False] + [True] * 7
    assert sum(a.merge for a in answers) == 1
    assert len({a.seq for a in answers}) == 1
    assert len(log.scan("tn_a", 0, 100)) == 3


def test_bad_keys_are_refused(log: SqlEventLog) -> None:
    for bad in ("", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="batch key"):
            log.append_once("tn_a", batch("i1"), key(bad), OUTCOME)
    with pytest.raises(ValueError, match="no events"):
        log.append_once("tn_a", [], key(), OUTCOME)
    assert log.scan("tn_a", 0, 10) == []
