"""promote/rollback edit serve_config.yaml keeping comments and layout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from servekit.configedit import ConfigFile, EditError, promote, rollback, split_rest
from tests.conftest import REPO_ROOT


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "serve_config.yaml"
    shutil.copy(REPO_ROOT / "serve_config.yaml", path)
    return path


def _traffic(path: Path) -> dict[str, int]:
    doc = yaml.safe_load(path.read_text())
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    weights: dict[str, int] = ingress["user_config"]["traffic"]["minilm"]
    return weights


def test_round_trip_is_byte_identical(config: Path) -> None:
    cfg = ConfigFile.load(config)
    assert cfg.render() == config.read_text()
    assert cfg.diff() == ""


def test_promote_changes_only_the_weights(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    changed = [
        line
        for line in cfg.diff().splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert [line.replace(" ", "") for line in changed] == ["-v1:90", "-v2:10", "+v1:50", "+v2:50"]
    assert "# Traffic weights per model" in cfg.render()


@pytest.mark.parametrize(
    ("current", "version", "weight", "expected"),
    [
        ({"v1": 90, "v2": 10}, "v2", 20, {"v1": 80, "v2": 20}),
        ({"v1": 90, "v2": 10}, "v2", 100, {"v1": 0, "v2": 100}),
        ({"a": 50, "b": 30, "c": 20}, "c", 40, {"a": 38, "b": 22, "c": 40}),
        ({"a": 100, "b": 0}, "a", 60, {"a": 60, "b": 40}),
        ({"a": 60, "b": 40, "c": 0}, "c", 5, {"a": 57, "b": 38, "c": 5}),
    ],
)
def test_split_rest(
    current: dict[str, int], version: str, weight: int, expected: dict[str, int]
) -> None:
    result = split_rest(current, version, weight)
    assert result == expected
    assert sum(result.values()) == 100


def test_rollback_to_primary_and_errors(config: Path) -> None:
    cfg = ConfigFile.load(config)
    assert rollback(cfg, "minilm", None) == "v1"
    promote(cfg, "minilm", "v2", 50)
    with pytest.raises(EditError, match="no single primary version"):
        rollback(cfg, "minilm", None)
    assert rollback(cfg, "minilm", "v2") == "v2"
    with pytest.raises(EditError, match="not declared"):
        promote(cfg, "nope", "v1", 10)
    with pytest.raises(EditError, match=r"outside 0\.\.100"):
        promote(cfg, "minilm", "v1", 120)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit", *args], capture_output=True, text=True, check=False
    )


def test_cli_dry_run_writes_nothing(config: Path, example_store: Path) -> None:
    before = config.read_text()
    out = _cli("promote", "minilm", "v2", "--weight", "25", "--config", str(config), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "+              v2: 25" in out.stdout
    assert "dry run" in out.stdout
    assert config.read_text() == before


def test_cli_writes_without_applying(config: Path, example_store: Path) -> None:
    out = _cli("promote", "minilm", "v2", "--weight", "30", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert _traffic(config) == {"v1": 70, "v2": 30}
    out = _cli("rollback", "minilm", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert _traffic(config) == {"v1": 100, "v2": 0}


def test_cli_mistakes_exit_non_zero(config: Path) -> None:
    bad_version = _cli("promote", "minilm", "v7", "--weight", "5", "--config", str(config))
    assert bad_version.returncode == 2
    assert "no version 'v7'" in bad_version.stderr
    missing = _cli("rollback", "minilm", "--config", str(config.with_name("nope.yaml")))
    assert missing.returncode == 2
    no_weight = _cli("promote", "minilm", "v2", "--config", str(config))
    assert no_weight.returncode == 2
    assert "--weight" in no_weight.stderr
