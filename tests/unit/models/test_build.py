"""The example build is reproducible: nothing machine- or checkout-specific inside."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_graph_carries_no_source_paths(
    version: str, manifest: dict[str, Any], example_store: Path
) -> None:
    with tarfile.open(example_store / manifest[version]["file"]) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        graph = member.read()
    assert str(REPO_ROOT).encode() not in graph
    assert b"site-packages" not in graph


def test_second_build_is_a_no_op(example_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.build import build

    build(example_store)
    assert "up to date, nothing to build" in capsys.readouterr().out


def test_fp32_version_runs_on_fused_transformer_operators(
    manifest: dict[str, Any], example_store: Path
) -> None:
    """Every layer's attention, skip + layer norm and bias + GELU are one node each: a
    new exporter or rewriter that stops matching the patterns fails here, not in a
    benchmark."""
    import collections

    import onnx

    with tarfile.open(example_store / manifest["v1"]["file"]) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        graph = onnx.load_model_from_string(member.read()).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["Attention"] == 6
    assert ops["SkipLayerNormalization"] == 12
    assert ops["BiasGelu"] == 6
    assert ops["Softmax"] == ops["Transpose"] == 0


def test_a_store_built_by_an_earlier_recipe_is_rebuilt(example_store: Path, tmp_path: Path) -> None:
    """Files that verify against their manifest are not enough: a store whose manifest
    names an earlier recipe is built again."""
    import json
    import shutil

    from models.build import RECIPE, _manifest_ok

    shutil.copytree(example_store / "minilm", tmp_path / "minilm")
    data = json.loads((example_store / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert _manifest_ok(tmp_path)
    data["recipe"] = RECIPE - 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert not _manifest_ok(tmp_path)
