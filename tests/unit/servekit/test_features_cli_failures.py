"""`servekit features` when the registry's database (the event log, the catalogs) does
not answer: one line naming the server, exit 1, never a traceback or the password."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from servekit.cli import main
from tests.conftest import free_port

PASSWORD = "pw-that-must-not-show"


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port()
    dsn = f"postgresql+psycopg://servekit:{PASSWORD}@127.0.0.1:{port}/servekit"
    monkeypatch.setenv("SERVEKIT_REGISTRY_DSN", dsn)
    return port


def test_rebuild_with_the_event_log_down_says_so_in_a_line(
    unreachable: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["features", "rebuild", "--tenant", "tn_a"]) == 1
    out = capsys.readouterr()
    assert out.err.startswith("servekit features rebuild: the registry's database did not answer")
    assert f'127.0.0.1", port {unreachable}' in out.err
    assert "Traceback" not in out.err
    assert PASSWORD not in out.err + out.out
    assert len(out.err.strip().splitlines()) == 1


def test_materialize_with_the_catalog_store_down_says_so_in_a_line(
    unreachable: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "h.parquet"
    rows = [{"user": "u", "item": "i", "type": "view", "timestamp": 1_700_000_000}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    args = ["features", "materialize", str(path), "--tenant", "tn_a", "--catalog", "shop"]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "the registry's database did not answer" in out.err
    assert "Traceback" not in out.err
    assert PASSWORD not in out.err + out.out
