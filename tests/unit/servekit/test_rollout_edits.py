"""`servekit promote` / `rollback` on the file: one edit at a time, written in one step."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from servekit import rollout_cli
from servekit.rollout_cli import _editing, edit_and_apply
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def _no_instance_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray instance is connected to unless a test says what it answers: the suite's
    own instance may be up, and its record names this process."""

    def nothing_answers(address: str) -> Any:
        raise ConnectionError(f"no instance at {address} in these tests")

    monkeypatch.setattr(rollout_cli, "_as_driver", nothing_answers)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "serve_config.yaml"
    path.write_text((REPO_ROOT / "serve_config.yaml").read_text())
    return path


def _traffic(path: Path) -> dict[str, dict[str, int]]:
    doc = yaml.safe_load(path.read_text())
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    traffic: dict[str, dict[str, int]] = ingress["user_config"]["traffic"]
    return traffic


def _promote(path: Path, weight: int, codes: list[int]) -> None:
    codes.append(edit_and_apply(path, "minilm", "promote", ("v2", weight), False, False, "local"))


def test_a_second_edit_waits_and_builds_on_the_first(config: Path) -> None:
    """While one edit holds the file, another waits; it then edits what the first wrote
    instead of writing over it."""
    codes: list[int] = []
    with _editing(config):
        second = threading.Thread(target=_promote, args=(config, 30, codes))
        second.start()
        time.sleep(0.3)
        assert codes == []  # waiting for the lock
        # The first edit, as another `servekit` run would write it.
        config.write_text(config.read_text() + "# the first edit\n")
    second.join(timeout=30)
    assert codes == [0]
    assert _traffic(config)["minilm"] == {"v1": 70, "v2": 30}
    assert config.read_text().endswith("# the first edit\n")
    assert not list(config.parent.glob(".*.tmp"))  # written in one step, nothing left


def test_an_edit_of_a_file_changed_meanwhile_is_not_written(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand edit between the read and the write: refused, the hand edit kept."""
    import servekit.local as local  # edit_and_apply imports check_document from here

    original = local.check_document

    def meanwhile(doc: object, check_artifacts: bool = True) -> list[str]:
        config.write_text(config.read_text() + "# edited by hand meanwhile\n")
        return original(doc, check_artifacts)

    monkeypatch.setattr(local, "check_document", meanwhile)
    codes: list[int] = []
    _promote(config, 30, codes)
    assert codes == [1]
    assert config.read_text().endswith("# edited by hand meanwhile\n")
    assert _traffic(config)["minilm"] == {"v1": 90, "v2": 10}


def test_a_promote_that_cannot_ask_about_search_indexes_says_so(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = edit_and_apply(config, "minilm", "promote", ("v2", 30), True, True, "local", url=url)
    assert code == 0
    out = capsys.readouterr().out
    assert f"note: could not ask {url} whether minilm/v2 has complete search indexes" in out
    assert "Pass --url" in out
    assert "dry run: nothing written, nothing applied" in out


def test_a_promote_that_removes_a_shadow_says_so_and_writes_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config.read_text()
    anchor = "          # Optional, also live:\n"
    shadow = "          shadow:\n            minilm: {version: v2, fraction: 0.1}\n"
    config.write_text(text.replace(anchor, shadow + anchor))
    assert edit_and_apply(config, "minilm", "promote", ("v2", 100), False, False, "local") == 0
    out = capsys.readouterr().out
    assert "-          shadow:\n-            minilm: {version: v2, fraction: 0.1}\n" in out
    assert (
        "note: v2 takes all traffic: the shadow mirroring 10% of its requests to it is removed"
        in out
    )
    written = yaml.safe_load(config.read_text())
    ingress = next(d for d in written["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert "shadow" not in ingress["user_config"]
    assert _traffic(config)["minilm"] == {"v1": 0, "v2": 100}


def test_a_symlinked_config_stays_a_link_and_its_target_is_edited(config: Path) -> None:
    link = config.with_name("linked.yaml")
    link.symlink_to(config)
    codes: list[int] = []
    _promote(link, 30, codes)
    assert codes == [0]
    assert link.is_symlink()
    assert _traffic(config)["minilm"] == {"v1": 70, "v2": 30}
    assert (config.parent / f".{config.name}.lock").exists()  # one lock, at the target


# ---- a deployed version keeps its artifact -------------------------------------------


def _running_with_other_sha(path: Path) -> dict[str, Any]:
    """Serve's details as the controller answers them: what runs is the file, except
    that minilm/v1 was deployed from other bytes."""
    app = copy.deepcopy(yaml.safe_load(path.read_text())["applications"][0])
    app["args"]["models"]["minilm"]["versions"]["v1"]["artifact"]["sha256"] = "f" * 64
    return {"applications": {app["name"]: {"status": "RUNNING", "deployed_app_config": app}}}


@pytest.fixture
def deployed_nowhere(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Nothing is deployed for real: what would be is recorded instead."""
    from servekit import local

    applied: list[str] = []
    monkeypatch.setattr(rollout_cli, "_as_driver", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(local, "deploy", lambda doc, **kwargs: applied.append("driver"))

    def serve_deploy(argv: list[str], check: bool) -> Any:
        applied.append("serve deploy")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(rollout_cli.subprocess, "run", serve_deploy)
    return applied


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "http://127.0.0.1:8265"])
def test_apply_refuses_other_bytes_under_a_deployed_version_name(
    config: Path,
    example_store: Path,
    deployed_nowhere: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    address: str,
) -> None:
    details = _running_with_other_sha(config)
    monkeypatch.setattr(rollout_cli, "_driver_details", lambda: details)
    monkeypatch.setattr(rollout_cli, "_get", lambda url, headers=None: details)
    assert rollout_cli.deploy(config, address) == 1
    assert deployed_nowhere == []
    err = capsys.readouterr().err
    assert "servekit: applications[0].args.models.minilm.versions.v1: minilm/v1 is deployed" in err
    assert "declare the new model under a new version name instead of v1" in err
    assert err.endswith("servekit: nothing applied\n")
    # What runs is what the file says: applied.
    same = copy.deepcopy(details)
    same["applications"]["servekit"]["deployed_app_config"] = yaml.safe_load(config.read_text())[
        "applications"
    ][0]
    monkeypatch.setattr(rollout_cli, "_driver_details", lambda: same)
    monkeypatch.setattr(rollout_cli, "_get", lambda url, headers=None: same)
    assert rollout_cli.deploy(config, address) == 0
    assert len(deployed_nowhere) == 1


def test_promote_refuses_other_bytes_under_a_deployed_version_name(
    config: Path,
    example_store: Path,
    deployed_nowhere: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A promote applies the whole file: one whose v1 is not the v1 that runs is refused
    before anything is written; a dry run says it would be."""
    before = config.read_text()
    details = _running_with_other_sha(config)
    monkeypatch.setattr(rollout_cli, "_serve_details", lambda address: details)
    url = "http://127.0.0.1:9"  # no search indexes to ask about
    code = edit_and_apply(config, "minilm", "promote", ("v2", 30), True, True, "local", url=url)
    assert code == 0
    out = capsys.readouterr().out
    assert "note: applying would be refused: applications[0].args.models.minilm.versions.v1" in out
    code = edit_and_apply(config, "minilm", "promote", ("v2", 30), False, True, "local", url=url)
    assert code == 1
    err = capsys.readouterr().err
    assert "minilm/v1 is deployed, and the file changes its artifact.sha256" in err
    assert err.endswith("servekit: nothing written, nothing applied\n")
    assert config.read_text() == before
    assert deployed_nowhere == []


# ---- search indexes: promote and rollback alike --------------------------------------

# `/admin/v1/search/indexes` of a service whose catalogs index minilm v1 (its only
# version with traffic) and the recommender; minilm/v2 has no index.
INDEXES = {
    "seq": 7,
    "spaces": ["minilm/v1", "recommender/v1"],
    "pending": {"minilm/v1": 0, "recommender/v1": 0},
    "catalogs": [
        {"tenant_id": "acme", "catalog": "products", "items": 3,
         "indexes": {"minilm/v1": {"vectors": 3, "complete": True},
                     "recommender/v1": {"vectors": 3, "complete": True}}},
    ],
}  # fmt: skip


# Vectors the store holds per space, for every catalog (`?stored=` of the route).
STORED: dict[str, int] = {}


@pytest.fixture
def indexes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """servekit's index state as above (stored vectors: STORED); the URLs asked."""
    asked: list[str] = []
    STORED.clear()

    def get(url: str, headers: dict[str, str] | None = None) -> Any:
        asked.append(url)
        doc = copy.deepcopy(INDEXES)
        if "?stored=" in url:
            space = unquote(url.split("?stored=", 1)[1])
            for catalog in doc["catalogs"]:
                catalog["stored"] = STORED.get(space, 0)
        return doc

    monkeypatch.setattr(rollout_cli, "_get", get)
    monkeypatch.setattr(rollout_cli, "_serve_details", lambda address: None)
    return asked


def _set_weights(path: Path, weights: dict[str, int]) -> None:
    text = path.read_text()
    old = "            minilm:\n              v1: 90\n              v2: 10\n"
    assert old in text
    new = "            minilm:\n" + "".join(f"              {v}: {w}\n" for v, w in weights.items())
    path.write_text(text.replace(old, new, 1))


def test_rollback_to_a_version_without_an_index_is_refused_as_a_promote_is(
    config: Path, example_store: Path, indexes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """v2 had no traffic, so no catalog index: a rollback giving it all the traffic would
    leave searches 503 index_building; refused (a dry run says it would be)."""
    _set_weights(config, {"v1": 100, "v2": 0})
    before = config.read_text()
    url = "http://servekit.test"
    code = edit_and_apply(config, "minilm", "rollback", "v2", False, True, "local", url=url)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "servekit: minilm/v2 has no complete search index for 1 of 1 catalogs: no replica "
        "keeps an index of it (it has no traffic, shadow or canary): give it a shadow or a "
        "canary first, so its index is built; `servekit status` shows the progress\n"
    )
    assert "Roll back to a version whose indexes are complete with --to" in err
    assert "--allow-incomplete-index" in err
    assert config.read_text() == before
    asked = f"{url}/admin/v1/search/indexes"
    assert indexes == [asked, f"{asked}?stored=minilm%2Fv2"]  # nor are its vectors stored
    code = edit_and_apply(config, "minilm", "rollback", "v2", True, True, "local", url=url)
    assert code == 0
    assert "note: applying would be refused: minilm/v2 has no complete" in capsys.readouterr().out
    # As promote's: the same refusal, the same way past it.
    code = edit_and_apply(config, "minilm", "promote", ("v2", 5), False, True, "local", url=url)
    assert code == 1
    assert "minilm/v2 has no complete search index" in capsys.readouterr().err
    code = edit_and_apply(
        config, "minilm", "rollback", "v2", False, False, "local",
        allow_incomplete_index=True, url=url,
    )  # fmt: skip
    assert code == 0
    assert _traffic(config)["minilm"] == {"v1": 0, "v2": 100}


def test_a_rollback_to_a_version_whose_vectors_are_all_stored_goes_ahead(
    config: Path, example_store: Path, indexes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """v2 left long enough ago that replicas dropped its index, but the store holds its
    vector of every item: its index comes back from them in seconds, so the rollback is
    not refused (one vector short, it is)."""
    _set_weights(config, {"v1": 100, "v2": 0})
    url = "http://servekit.test"
    STORED["minilm/v2"] = 2  # of 3 items
    assert edit_and_apply(config, "minilm", "rollback", "v2", True, True, "local", url=url) == 0
    assert "note: applying would be refused: minilm/v2" in capsys.readouterr().out
    STORED["minilm/v2"] = 3
    assert edit_and_apply(config, "minilm", "rollback", "v2", True, True, "local", url=url) == 0
    assert "would be refused" not in capsys.readouterr().out
    code = edit_and_apply(config, "minilm", "rollback", "v2", False, False, "local", url=url)
    assert code == 0
    assert _traffic(config)["minilm"] == {"v1": 0, "v2": 100}


def test_a_rollback_that_gives_no_version_new_traffic_asks_nothing(
    config: Path, example_store: Path, indexes: list[str]
) -> None:
    """v1 had traffic all along (its index is kept): undoing v2's promotion gives no
    version traffic it did not have; nothing to check."""
    assert edit_and_apply(config, "minilm", "promote", ("v2", 30), False, False, "local") == 0
    indexes.clear()
    assert edit_and_apply(config, "minilm", "rollback", None, True, True, "local") == 0
    assert indexes == []
    assert edit_and_apply(config, "minilm", "rollback", None, False, False, "local") == 0
    assert _traffic(config)["minilm"] == {"v1": 90, "v2": 10}


def test_a_model_catalogs_do_not_index_is_never_blocked(indexes: list[str]) -> None:
    """A second embedding model (e5) has no space in any catalog: no shadow would ever
    build one, and its traffic changes no search."""
    assert rollout_cli.search_index_blockers("http://s", "e5", ["v2"]) == []
    assert rollout_cli.search_index_blocker("http://s", "e5", "v1") is None
    assert rollout_cli.search_index_blocker("http://s", "minilm", "v1") is None
    blocked = rollout_cli.search_index_blockers("http://s", "minilm", ["v1", "v2"])
    assert [b.split(" has ")[0] for b in blocked] == ["minilm/v2"]


@pytest.fixture
def index_server() -> Iterator[str]:
    """servekit's `/admin/v1/search/indexes` answering INDEXES, at the URL yielded."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(INDEXES).encode()
            self.send_response(200 if self.path == "/admin/v1/search/indexes" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def _environment() -> Iterator[None]:
    """The commands set Ray's switches in the environment before Ray is imported."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("_environment")
def test_the_rollback_command_takes_url_and_allow_incomplete_index_as_promote_does(
    config: Path,
    example_store: Path,
    index_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from servekit import cli

    _set_weights(config, {"v1": 100, "v2": 0})
    argv = ["rollback", "minilm", "--to", "v2", "--config", str(config), "--url", index_server]
    assert cli.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "note: applying would be refused: minilm/v2 has no complete search index" in out
    assert cli.main([*argv, "--dry-run", "--allow-incomplete-index"]) == 0
    assert "would be refused" not in capsys.readouterr().out


def test_rollout_clear_finds_the_judge_of_an_unnamed_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Serve names an application the file leaves unnamed `default`, and so its judge;
    `rollout clear` refused such a file (`cannot read the application's name ...
    ('name')`, exit 2) instead of asking that judge."""
    import ray

    from deployments.canary_sync import judge_name

    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    del doc["applications"][0]["name"]
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    asked = []

    def get_actor(name: str, namespace: str) -> None:
        asked.append(name)
        raise ValueError("no such actor")

    monkeypatch.setattr(rollout_cli, "_as_driver", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(ray, "get_actor", get_actor)
    assert rollout_cli.clear_rollback("minilm", "127.0.0.1:6379", path) == 1
    assert asked == [judge_name("default")]
    assert "default has no canary judge" in capsys.readouterr().out
