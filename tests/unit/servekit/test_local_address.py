"""`--address local` is the GCS address the one running instance of this checkout
recorded, never whichever Ray instance Ray would pick; none or several is an error
that names `--address`. A local instance is always a new one of its own, whatever
`RAY_ADDRESS` says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servekit import instance, local, rollout_cli


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(instance, "STATE_DIR", tmp_path / ".servekit")
    return tmp_path / ".servekit"


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes standing in for running `servekit serve` commands."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _serving(
    owners: list[subprocess.Popen[bytes]], gcs: str, config: str = "serve_config.yaml"
) -> instance.Record:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    owners.append(proc)
    ticks = instance.start_ticks(proc.pid)
    record = instance.Record(proc.pid, ticks, instance.new_token(), 8000, config, [], gcs)
    record.write()
    return record


def _gone(gcs: str) -> instance.Record:
    """The record of a `servekit serve` that was killed."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(proc.stdout)
    record = instance.Record(pid, 1, instance.new_token(), 8000, "old.yaml", [], gcs)
    record.write()
    return record


def test_the_one_running_instance_is_local(owners: list[subprocess.Popen[bytes]]) -> None:
    _gone("127.0.0.1:6100")
    _serving(owners, "127.0.0.1:6200")
    assert instance.local_address() == "127.0.0.1:6200"
    assert rollout_cli.gcs_address("local") == "127.0.0.1:6200"
    assert rollout_cli.gcs_address("127.0.0.1:6300") == "127.0.0.1:6300"
    assert rollout_cli._shown("local") == "local (127.0.0.1:6200)"


def test_none_running_names_address() -> None:
    _gone("127.0.0.1:6100")
    with pytest.raises(instance.InstanceError, match="no servekit serve of this checkout") as e:
        instance.local_address()
    assert "--address" in str(e.value)
    assert rollout_cli._shown("local") == "local"


def test_several_running_are_listed_and_address_asked_for(
    owners: list[subprocess.Popen[bytes]],
) -> None:
    first = _serving(owners, "127.0.0.1:6201", "a.yaml")
    second = _serving(owners, "127.0.0.1:6202", "b.yaml")
    with pytest.raises(instance.InstanceError, match="2 local instances") as e:
        instance.local_address()
    message = str(e.value)
    assert f"pid {first.pid} (a.yaml) at 127.0.0.1:6201" in message
    assert f"pid {second.pid} (b.yaml) at 127.0.0.1:6202" in message
    assert "--address host:port" in message


def test_one_still_starting_says_so(owners: list[subprocess.Popen[bytes]]) -> None:
    _serving(owners, "")
    with pytest.raises(instance.InstanceError, match=r"still starting.*--address"):
        instance.local_address()


def test_an_instance_started_without_servekit_serve_is_recorded_then_forgotten() -> None:
    token = instance.new_token()
    record = instance.record_started(token, "127.0.0.1:6400")
    assert record.port == 0
    assert instance.records() == [record]
    assert instance.local_address() == "127.0.0.1:6400"
    instance.forget("another token")
    assert record.path.exists()
    instance.forget(token)
    assert not record.path.exists()


def test_a_record_written_before_the_address_was_kept_still_reads(state_dir: Path) -> None:
    record = instance.record_this(instance.new_token(), 8000, Path("serve_config.yaml"))
    assert record.gcs_address == ""
    seen = record.seen("127.0.0.1:6500")
    assert instance.records() == [seen]
    assert seen.seen().gcs_address == "127.0.0.1:6500"


class _FakeRay:
    """`ray.init` and `ray.is_initialized` that start nothing and remember the call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray

        self.calls: list[dict[str, Any]] = []
        monkeypatch.setattr(ray, "init", lambda **kwargs: self.calls.append(kwargs))
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "shutdown", lambda: None)


def test_a_driver_of_local_connects_to_the_recorded_address(
    monkeypatch: pytest.MonkeyPatch, owners: list[subprocess.Popen[bytes]]
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    fake = _FakeRay(monkeypatch)
    _serving(owners, "127.0.0.1:6600")
    with rollout_cli._as_driver("local"):
        pass
    assert fake.calls[0]["address"] == "127.0.0.1:6600"


def test_apply_to_local_with_nothing_running_names_address(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _FakeRay(monkeypatch)
    assert rollout_cli.deploy_as_driver({"applications": []}, "local") == 1
    err = capsys.readouterr().err
    assert err.startswith("servekit: --address local: no servekit serve"), err
    assert fake.calls == []


def test_status_says_why_replica_counts_are_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _FakeRay(monkeypatch)
    monkeypatch.setattr(rollout_cli, "_get", lambda url, headers=None: {"data": []})
    assert rollout_cli.status("http://127.0.0.1:9", "local") == 0
    out = capsys.readouterr().out
    assert "(replica counts unavailable: --address local: no servekit serve" in out


def test_a_local_instance_is_always_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    monkeypatch.setattr(local.ray_worker, "skip_arrow_serializers", lambda: None)
    fake = _FakeRay(monkeypatch)
    local.start_ray(num_cpus=2)
    assert fake.calls[0]["address"] == "local"
    assert fake.calls[0]["num_cpus"] == 2
