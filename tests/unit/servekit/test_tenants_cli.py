"""`servekit tenants ...` as an operator types it: against a local HTTP server that
records each request and answers what the test scripts; user errors are one line on
stderr and exit 1, never a traceback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from servekit import tenants_cli
from servekit.cli import main

TOKEN = "operator-credential-for-cli-tests"


@dataclass
class Recorder:
    """What the server was asked, and what it answers next."""

    url: str = ""
    seen: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    status: int = 200
    answer: bytes = b"[]"


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            recorder.seen.append((self.command, self.path, dict(self.headers), body))
            self.send_response(recorder.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(recorder.answer)))
            self.end_headers()
            self.wfile.write(recorder.answer)

        do_GET = do_POST = do_DELETE = do_PATCH = _any

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tenants_cli, "operator_token", lambda: TOKEN)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err
    assert err.startswith("servekit: ")
    assert err.count("\n") == 1


def test_url_may_follow_the_verb(server: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "list", "--url", server.url]) == 0
    assert main(["tenants", "keys", "list", "acme", "--url", server.url]) == 0
    assert main(["tenants", "--url", server.url, "keys", "revoke", "acme", "key_1"]) == 0
    paths = [(method, path) for method, path, _, _ in server.seen]
    assert paths == [
        ("GET", "/admin/v1/tenants"),
        ("GET", "/admin/v1/tenants/acme/keys"),
        ("DELETE", "/admin/v1/tenants/acme/keys/key_1"),
    ]
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for _, _, h, _ in server.seen)


def test_usage_dates_are_sent_as_query_values(server: Recorder) -> None:
    server.answer = b"{}"
    start = "2026-12-01&end=2026-01-01"
    assert main(["tenants", "usage", "acme", "--url", server.url, "--start", start]) == 0
    assert main(["tenants", "usage", "acme", "--url", server.url]) == 0
    assert [path for _, path, _, _ in server.seen] == [
        "/admin/v1/tenants/acme/usage?start=2026-12-01%26end%3D2026-01-01",
        "/admin/v1/tenants/acme/usage",
    ]


@pytest.mark.parametrize("option", ["--models", "--scopes"])
def test_an_empty_list_option_is_an_error_not_the_default(
    server: Recorder, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    """`--models "$MODELS"` with MODELS unset would have made a key for every model."""
    code = main(["tenants", "keys", "create", "acme", "--url", server.url, option, " , "])
    assert code == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert option in err
    assert server.seen == []


def test_unreadable_secrets_are_one_line_not_a_traceback(
    server: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from servekit import credentials

    monkeypatch.setattr(tenants_cli, "operator_token", credentials.operator_token)
    monkeypatch.delenv("SERVEKIT_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("SERVEKIT_ADMIN_TOKEN_FILE", raising=False)
    monkeypatch.setenv("SERVEKIT_SECRETS_DIR", "/nonexistent/servekit-secrets")
    assert main(["tenants", "list", "--url", server.url]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "SERVEKIT_SECRETS_DIR" in err
    assert server.seen == []


def test_no_operator_credential_says_where_it_is_looked_for(
    server: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenants_cli, "operator_token", lambda: None)
    assert main(["tenants", "list", "--url", server.url]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "SERVEKIT_ADMIN_TOKEN" in err
    assert server.seen == []


def test_failures_exit_1_with_the_services_message(
    server: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    server.status = 404
    server.answer = json.dumps({"error": {"message": "tenant: no such tenant"}}).encode()
    assert main(["tenants", "usage", "nobody", "--url", server.url]) == 1
    assert capsys.readouterr().err == "servekit: 404 tenant: no such tenant\n"
    server.status, server.answer = 200, b"<html>not servekit</html>"
    assert main(["tenants", "list", "--url", server.url]) == 1
    _no_traceback(capsys.readouterr().err)
    assert main(["tenants", "list", "--url", "http://127.0.0.1:1"]) == 1
    _no_traceback(capsys.readouterr().err)


def test_a_new_key_is_printed_once_with_the_reminder(
    server: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    made = {"id": "key_1", "prefix": "sk-abcdefgh", "key": "sk-abcdefgh" + "x" * 40}
    server.answer = json.dumps(made).encode()
    argv = ["tenants", "keys", "create", "acme", "--url", server.url, "--models", "minilm"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["key"] == made["key"]
    assert made["key"] not in err
    assert "shown only this once" in err
    assert server.seen[0][3]["models"] == ["minilm"]


def test_a_refused_operator_credential_says_which_credential(
    server: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong operator credential printed the gate's "a valid API key is required" to
    someone who had passed no key; it names the credential the command sent and where
    it comes from, and never the credential itself."""
    server.status = 401
    server.answer = json.dumps({"error": {"message": "a valid API key is required"}}).encode()
    assert main(["tenants", "list", "--url", server.url]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert err.startswith(f"servekit: 401 the service at {server.url} refused the operator ")
    assert "SERVEKIT_ADMIN_TOKEN" in err
    assert TOKEN not in err


def test_update_disables_enables_and_changes_only_the_limits_named(
    server: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Disabling a tenant, or changing one of its limits, took a hand-written curl PATCH:
    `tenants update` sends the PATCH, naming only what its options name."""
    server.answer = b"{}"
    base = ["tenants", "update", "acme", "--url", server.url]
    assert main([*base, "--disable"]) == 0
    assert main([*base, "--enable", "--requests-per-s", "100"]) == 0
    assert main([*base, "--unlimited", "monthly_texts,texts_per_s"]) == 0
    assert {(m, p) for m, p, _, _ in server.seen} == {("PATCH", "/admin/v1/tenants/acme")}
    assert [body for _, _, _, body in server.seen] == [
        {"disabled": True},
        {"limits": {"requests_per_s": 100.0}, "disabled": False},
        {"limits": {"monthly_texts": None, "texts_per_s": None}},
    ]


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ([], "nothing to change"),
        (["--unlimited", "qps"], "--unlimited: 'qps' is no limit"),
        (["--unlimited", "texts_per_s", "--texts-per-s", "5"], "also given a value"),
    ],
)
def test_update_refuses_what_would_change_nothing_or_contradict(
    server: Recorder, capsys: pytest.CaptureFixture[str], options: list[str], names: str
) -> None:
    assert main(["tenants", "update", "acme", "--url", server.url, *options]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert names in err
    assert server.seen == []
