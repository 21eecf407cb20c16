"""`servekit promote` / `rollback` on the file: one edit at a time, written in one step."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from servekit.rollout_cli import _editing, edit_and_apply
from tests.conftest import REPO_ROOT


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


def test_a_symlinked_config_stays_a_link_and_its_target_is_edited(config: Path) -> None:
    link = config.with_name("linked.yaml")
    link.symlink_to(config)
    codes: list[int] = []
    _promote(link, 30, codes)
    assert codes == [0]
    assert link.is_symlink()
    assert _traffic(config)["minilm"] == {"v1": 70, "v2": 30}
    assert (config.parent / f".{config.name}.lock").exists()  # one lock, at the target
