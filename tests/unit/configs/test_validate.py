"""Config validation: the shipped file is valid; each broken fixture gives its message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from configs.validate import validate_file
from tests.conftest import REPO_ROOT

BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))
# Broken only as Serve reads them (Ray's own settings): `servekit validate` refuses them,
# `python -m configs validate` (servekit's part alone, no Ray) does not look there.
BROKEN_FOR_SERVE = sorted((Path(__file__).parent / "broken" / "serve_schema").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


def test_shipped_config_is_valid(example_store: Path) -> None:
    report = validate_file(REPO_ROOT / "serve_config.yaml")
    assert report.problems == []
    (app,) = report.apps
    assert app.ingress.traffic == {"minilm": {"v1": 90, "v2": 10}, "recommender": {"v1": 100}}
    assert app.args.recommender() == "recommender"
    assert app.args.search_model() == "minilm"
    # Shipped inline: both versions batch inside the Ingress, no per-version deployments.
    assert app.args.models["minilm"].placement == "inline"
    assert set(app.ingress.batching) == {"minilm-v1", "minilm-v2"}
    assert app.batching == {}


def test_shipped_checksums_match_the_built_store(manifest: dict[str, dict[str, str]]) -> None:
    (app,) = validate_file(REPO_ROOT / "serve_config.yaml").apps
    for version, spec in app.args.models["minilm"].versions.items():
        assert spec.artifact.sha256 == manifest[version]["sha256"], (
            f"serve_config.yaml's sha256 for minilm/{version} differs from the built artifact"
        )
    import json

    built = json.loads((REPO_ROOT / "artifacts" / "recommender" / "manifest.json").read_text())
    for version, spec in app.args.models["recommender"].versions.items():
        assert spec.artifact.sha256 == built["versions"][version]["sha256"], (
            f"serve_config.yaml's sha256 for recommender/{version} differs from the built one"
        )


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config_message(path: Path, example_store: Path) -> None:
    report = validate_file(path)
    assert not report.ok
    expected = _expected(path)
    assert any(p.startswith(expected) for p in report.problems), report.problems


def _all_expected(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", BROKEN_FOR_SERVE, ids=[p.stem for p in BROKEN_FOR_SERVE])
def test_broken_for_serve_config_messages(
    path: Path, example_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`servekit validate` reports exactly these problems (every `# expect:` line)."""
    import yaml

    from servekit import cli
    from servekit.local import check_document

    assert validate_file(path).ok  # servekit's own part is fine
    assert check_document(yaml.safe_load(path.read_text())) == _all_expected(path)
    assert cli.main(["validate", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{path}: {e}" for e in _all_expected(path)]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_servekit_validate_reports_every_broken_config_too(path: Path, example_store: Path) -> None:
    import yaml

    from servekit.local import check_document

    problems = check_document(yaml.safe_load(path.read_text()))
    assert any(p.startswith(_expected(path)) for p in problems), problems


def test_sound_autoscaling_passes(example_store: Path) -> None:
    """Every key the README names, and a policy, pass; so does the shipped file."""
    import yaml

    from servekit.local import check_document

    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    assert check_document(doc) == []
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["autoscaling_config"] = {
        "min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
        "target_ongoing_requests": 32, "upscale_delay_s": 10, "downscale_delay_s": 300,
        "policy": {"policy_function": "ray.serve.autoscaling_policy:default_autoscaling_policy"},
    }  # fmt: skip
    assert check_document(doc) == []


def test_command_line_exit_codes(example_store: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "configs", "validate", str(REPO_ROOT / "serve_config.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    broken = BROKEN[0]
    bad = subprocess.run(
        [sys.executable, "-m", "configs", "validate", str(broken)], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert _expected(broken) in bad.stderr


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_text("applications: [unclosed\n")
    assert validate_file(junk).problems[0].endswith("not valid YAML")
    assert validate_file(tmp_path / "nope.yaml").problems[0].endswith("no such file")
