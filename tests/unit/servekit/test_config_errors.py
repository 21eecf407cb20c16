"""A config (or catalog) that cannot be read, is not YAML, or is not a mapping is
named in one line and the command exits non-zero: never a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit import cli, local
from servekit.configedit import ConfigFile, EditError

FILES = {
    "bad.yaml": "applications: [1\n",
    "tabs.yaml": "applications:\n\t- name: x\n",
    "list.yaml": "- name: servekit\n- name: other\n",
    "empty.yaml": "",
    "binary.yaml": b"\xff\xfe\x00junk",
}


@pytest.fixture(autouse=True)
def _environment() -> Iterator[None]:
    """The commands set Ray's switches in the environment before Ray is imported."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, content in FILES.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (tmp_path / "configs").mkdir()
    return tmp_path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize(
    ("argv", "named", "says"),
    [
        (["validate", "bad.yaml"], "bad.yaml:2", "not valid YAML"),
        (["validate", "tabs.yaml"], "tabs.yaml:2", "not valid YAML"),
        (["validate", "binary.yaml"], "binary.yaml", "not a text file"),
        (["validate", "configs"], "configs", "is a directory"),
        (["apply", "bad.yaml"], "bad.yaml:2", "not valid YAML"),
        (["apply", "configs"], "configs", "is a directory"),
        (["apply", "nope.yaml"], "nope.yaml", "no such file"),
        (["promote", "minilm", "v2", "--weight", "5", "--config", "bad.yaml"], "bad.yaml:2",
         "not valid YAML"),
        (["promote", "minilm", "v2", "--weight", "5", "--config", "tabs.yaml"], "tabs.yaml:2",
         "not valid YAML"),
        (["promote", "minilm", "v2", "--weight", "5", "--config", "configs"], "configs",
         "is a directory"),
        (["rollback", "minilm", "--config", "list.yaml"], "list.yaml", "expected a mapping"),
        (["rollback", "minilm", "--config", "empty.yaml"], "empty.yaml", "expected a mapping"),
        (["rollback", "minilm", "--config", "binary.yaml"], "binary.yaml", "not a text file"),
        (["index", "build", "--items", "nope.jsonl"], "nope.jsonl", "no such file"),
        (["index", "build", "--items", "configs"], "configs", "is a directory"),
        (["index", "build", "--config", "configs"], "configs", "is a directory"),
    ],
)  # fmt: skip
def test_an_unusable_file_is_named_without_a_traceback(
    files: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str, says: str
) -> None:
    if argv[0] == "index" and "--config" not in argv:
        (files / "serve_config.yaml").write_text("applications: []\n")
    code, err = _run(argv, capsys)
    assert code != 0
    assert f"{named}: {says}" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", ["bad.yaml", "configs", "list.yaml"])
def test_serve_names_an_unusable_config(
    files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def started(**kwargs: object) -> None:
        raise AssertionError("nothing is started for an unusable config")

    monkeypatch.setattr(local, "before_ray", lambda address: None)
    monkeypatch.setattr(local, "start_ray", started)
    code, err = _run(["serve", name], capsys)
    assert code == 1
    assert err.startswith(f"servekit: {name}"), err


def test_load_config_raises_deploy_error_caused_by_the_read(files: Path) -> None:
    with pytest.raises(local.DeployError, match="is a directory") as raised:
        local.load_config(files / "configs")
    assert isinstance(raised.value.__cause__, IsADirectoryError)
    with pytest.raises(local.DeployError, match=r"bad\.yaml:2: not valid YAML"):
        local.load_config(files / "bad.yaml")


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("", "an empty document"), ("just text\n", "a str value")],
)
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, found: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(EditError, match=rf"c\.yaml: expected a mapping .*, found {found}$"):
        ConfigFile.load(path)


def test_a_missing_file_is_an_edit_error(tmp_path: Path) -> None:
    with pytest.raises(EditError, match=r"nope\.yaml: no such file"):
        ConfigFile.load(tmp_path / "nope.yaml")


SHIPPED = (Path(__file__).parents[3] / "serve_config.yaml").read_text()
MINILM_WEIGHTS = "            minilm:\n              v1: 90\n              v2: 10\n"


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        (MINILM_WEIGHTS, "            minilm: [v1, v2]\n",
         "applications[0].deployments[Ingress].user_config.traffic.minilm: expected a mapping "
         "of version: weight, found a list"),
        (MINILM_WEIGHTS, "            minilm:\n",
         "applications[0].deployments[Ingress].user_config.traffic.minilm: expected a mapping "
         "of version: weight, found nothing"),
        ("v1: 90", "v1: ninety",
         "applications[0].deployments[Ingress].user_config.traffic.minilm.v1: the weight is "
         "not a whole number 0..100"),
        ("v1: 90", "v1: 90.5",
         "applications[0].deployments[Ingress].user_config.traffic.minilm.v1: the weight is "
         "not a whole number 0..100"),
        ("    deployments:\n      - name: Ingress",
         "    deployments:\n      x:\n      - name: Ingress",
         "applications[0].deployments: expected a list of deployments"),
        ("      models:\n        minilm:", "      models: [1]\n      xmodels:\n        minilm:",
         "applications[0].args.models: expected a mapping, found a list"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_an_edit_of_a_malformed_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, old: str, new: str, says: str
) -> None:
    """promote and rollback on a hand-edited file whose traffic or layout is malformed
    exit 2 naming where, as validation would: they failed with AttributeError or
    ValueError tracebacks."""
    assert old in SHIPPED
    path = tmp_path / "serve_config.yaml"
    path.write_text(SHIPPED.replace(old, new, 1))
    argv = [command, "minilm", *(["v2", "--weight", "50"] if command == "promote" else [])]
    code, err = _run([*argv, "--config", str(path), "--dry-run"], capsys)
    assert code == 2
    assert err == f"servekit: {says}\n"
    assert path.read_text() == SHIPPED.replace(old, new, 1)


@pytest.mark.parametrize(
    ("deployments", "says"),
    [
        ([None], "applications[1].deployments[0]: expected a mapping with a name (Ray Serve "
         "schema)"),
        (5, "applications.1.deployments: Input should be a valid list (Ray Serve schema)"),
        (["Ingress"], "applications[1].deployments[0]: expected a mapping with a name (Ray Serve "
         "schema)"),
    ],
)  # fmt: skip
def test_another_applications_malformed_deployments_are_named(
    deployments: object, says: str
) -> None:
    """servekit's checks of Serve's settings (unknown keys, autoscaling) read every
    application's deployments: another application's malformed list failed with a
    TypeError (and Serve's own schema with an AttributeError) instead of a problem."""
    import yaml

    doc = yaml.safe_load(SHIPPED)
    doc["applications"].append(
        {"name": "other", "import_path": "other:app", "route_prefix": "/other",
         "deployments": deployments}
    )  # fmt: skip
    assert local.check_document(doc, check_artifacts=False) == [says]
