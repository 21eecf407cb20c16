"""Feature definitions: the shipped file loads, and broken files fail with where and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from configs.features import DEFAULT_DEFINITIONS, DefinitionsError, load_definitions
from configs.schema import AppArgs


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _base() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_DEFINITIONS.read_text())  # type: ignore[no-any-return]


def test_the_shipped_definitions_load() -> None:
    d = load_definitions()
    view = d.feature_views["user_activity"]
    assert (view.entity, view.ttl_s, len(view.features)) == ("user", 2592000, 20)
    assert view.features["category_affinity"].default_value() == {}
    assert view.features["recent_items"].default_value() == []
    assert view.features["clicks"].default_value() == 0
    assert d.weight("purchase") == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["feature_views"]["user_activity"]["features"]["clicks"].update(colour=1),
         "feature_views.user_activity.features.clicks.colour: unknown field"),
        (lambda d: d["feature_views"]["item_popularity"]["features"].update(
            brands={"kind": "affinity"}),
         "feature_views.item_popularity.features.brands: Value error, attribute: required"),
        (lambda d: d["feature_views"]["user_activity"]["features"]["clicks"].update(default=[]),
         "default: expected number for kind count"),
        (lambda d: d["feature_views"]["user_activity"].update(ttl_s=0),
         "feature_views.user_activity.ttl_s: Input should be greater than 0"),
        (lambda d: d["entities"].pop("item"),
         "feature_views.item_popularity.entity: 'item' is not among entities"),
        (lambda d: d["feature_views"]["user_activity"]["features"]["clicks"].update(
            event_types=["like"]),
         "feature_views.user_activity.features.clicks.event_types.0: Input should be"),
    ],
)  # fmt: skip
def test_broken_definitions_say_where_and_why(tmp_path: Path, change: Any, message: str) -> None:
    doc = _base()
    change(doc)
    with pytest.raises(DefinitionsError) as e:
        load_definitions(_write(tmp_path, doc))
    assert message in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionsError, match="no such file"):
        load_definitions(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("entities: [")
    with pytest.raises(DefinitionsError, match="not valid YAML"):
        load_definitions(tmp_path / "bad.yaml")
    with pytest.raises(DefinitionsError, match="a folder, expected a file"):
        load_definitions(tmp_path)


def test_args_refuse_definitions_that_do_not_load(tmp_path: Path) -> None:
    version = {"artifact": {"uri": "a", "sha256": "0" * 64}, "runtime": "onnx"}
    args = {"models": {"m": {"versions": {"v1": version}}}}
    assert AppArgs.model_validate(args).features.definitions is None
    with pytest.raises(ValidationError, match=r"features\n.*definitions: .*no such file"):
        AppArgs.model_validate({**args, "features": {"definitions": str(tmp_path / "x.yaml")}})
    with pytest.raises(ValidationError, match=r"features\n.*definitions: .*a folder"):
        AppArgs.model_validate({**args, "features": {"definitions": str(tmp_path)}})
    off = AppArgs.model_validate({**args, "features": {"enabled": False, "definitions": "x"}})
    assert not off.features.enabled
