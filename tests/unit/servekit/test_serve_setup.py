"""What `servekit serve` settles before it starts anything: the HTTP address it serves
on (127.0.0.1 unless the file says otherwise, in the check, the banner and what Serve
is given alike) and how long a stop waits for usage counts, which can never keep the
stop from happening."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from configs.validate import IMPORT_PATH
from servekit import cli, local

FOREIGN = {"name": "other", "import_path": "other.app:app", "args": {"auth": "not a mapping"}}


def _servekit(auth: Any = None) -> dict[str, Any]:
    args = {} if auth is None else {"auth": auth}
    return {"name": "servekit", "import_path": IMPORT_PATH, "args": args}


class _Record:
    token = "t"
    processes: tuple[Any, ...] = ()

    def seen(self, gcs_address: str | None = None, logs_dir: str | None = None) -> _Record:
        return self

    def remove(self) -> None:
        pass


class _Run:
    """`cli._serve` with nothing started: what it checked, deployed and stopped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any]) -> None:
        self.claimed: tuple[str, int] | None = None
        self.deployed: dict[str, Any] | None = None
        self.settle_s: float | None = None
        monkeypatch.setattr(local, "before_ray", lambda address: None)
        monkeypatch.setattr(local, "load_config", lambda path: doc)
        monkeypatch.setattr(local, "start_ray", lambda **kwargs: None)
        monkeypatch.setattr(local, "ray_address", lambda: "127.0.0.1:6379")
        monkeypatch.setattr(local, "logs_dir", lambda: "/tmp/ray/session_x/logs")
        monkeypatch.setattr(local, "deploy", self._deploy)
        monkeypatch.setattr(local, "shutdown", self._shutdown)
        monkeypatch.setattr(cli, "_on_stop_signals", lambda handler: None)
        monkeypatch.setattr(cli, "_claim", self._claim)
        monkeypatch.setattr(cli, "_prepare_auth", lambda doc: [])

    def _claim(
        self, path: Path, host: str, port: int, metrics_port: int, owner: int | None
    ) -> _Record:
        self.claimed = (host, port)
        return _Record()

    def _deploy(self, doc: dict[str, Any]) -> None:
        self.deployed = doc
        raise KeyboardInterrupt  # the operator's Ctrl-C once it runs

    def _shutdown(self, timeout_s: float, hurry: Any, known: Any, settle_s: float) -> bool:
        self.settle_s = settle_s
        return True

    def serve(self) -> int:
        return cli._serve(Path("serve_config.yaml"), 8080, False, 5.0)


def test_a_file_without_a_host_is_served_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(monkeypatch, {"http_options": {"port": 8123}, "applications": [_servekit()]})
    assert run.serve() == 0
    assert run.claimed == ("127.0.0.1", 8123)
    assert run.deployed is not None
    assert run.deployed["http_options"] == {"host": "127.0.0.1", "port": 8123}


@pytest.mark.parametrize("http", [None, {}, {"host": None}])
def test_no_http_options_at_all(monkeypatch: pytest.MonkeyPatch, http: Any) -> None:
    doc: dict[str, Any] = {"applications": [_servekit()]}
    if http is not None:
        doc["http_options"] = http
    run = _Run(monkeypatch, doc)
    assert run.serve() == 0
    assert run.claimed == ("127.0.0.1", 8000)
    assert run.deployed is not None
    assert run.deployed["http_options"]["host"] == "127.0.0.1"


def test_a_host_the_file_names_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"http_options": {"host": "0.0.0.0", "port": 8000}, "applications": [_servekit()]}
    run = _Run(monkeypatch, doc)
    assert run.serve() == 0
    assert run.claimed == ("0.0.0.0", 8000)
    assert run.deployed is not None
    assert run.deployed["http_options"]["host"] == "0.0.0.0"


def test_another_applications_args_never_keep_the_stop_from_happening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    foreign = {**FOREIGN, "args": {"auth": {"usage_flush_s": "soon", "token": "sk-secret"}}}
    run = _Run(monkeypatch, {"applications": [foreign, _servekit({"usage_flush_s": 2.0})]})
    assert run.serve() == 0
    assert run.settle_s == pytest.approx(2.3)


@pytest.mark.parametrize(
    ("apps", "settle_s"),
    [
        ([_servekit()], 1.3),
        ([_servekit({"enabled": False})], 0.0),
        ([_servekit({"usage_flush_s": 4.0})], 4.3),
        ([FOREIGN, _servekit({"usage_flush_s": "soon"})], 1.3),
        ([_servekit({"token": "sk-secret"})], 1.3),
        ([{**_servekit(), "args": ["not", "a", "mapping"]}], 1.3),
        ([FOREIGN], 0.0),
        (["not an application"], 0.0),
    ],
)
def test_usage_settle_s_never_raises(apps: list[Any], settle_s: float) -> None:
    assert cli._usage_settle_s({"applications": apps}) == pytest.approx(settle_s)


def test_a_stop_signal_repeated_at_once_is_one_stop() -> None:
    """`make serve` forwards a group's SIGTERM: the copy a moment later must neither
    escape the stop as a second KeyboardInterrupt nor cut the drain short; a signal
    sent later (a second Ctrl-C) cuts it short, and none raises again."""
    now = [100.0]
    stopper = cli._Stopper(clock=lambda: now[0])
    with pytest.raises(KeyboardInterrupt):
        stopper(15, None)
    now[0] += 0.01
    stopper(15, None)  # the forwarded copy
    assert not stopper.hurry.is_set()
    now[0] += cli.REPEAT_S
    stopper(2, None)  # Ctrl-C again, later
    assert stopper.hurry.is_set()
    stopper(15, None)
