"""The example build is reproducible: nothing machine- or checkout-specific inside."""

from __future__ import annotations

import math
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


def test_int8_version_has_constant_activation_scales(
    manifest: dict[str, Any], example_store: Path
) -> None:
    """v2 is quantized statically: no DynamicQuantizeLinear (one scale from the whole
    batch, which made a text's vector depend on the texts beside it); every activation
    is quantized with a scale and zero point stored in the graph, and its int8-rounded
    copy goes to matrix products only (the word embeddings aside, stored in int8): the
    residual connections and the outlier channels' products read the fp32 tensor."""
    import collections

    import onnx

    with tarfile.open(example_store / manifest["v2"]["file"]) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        graph = onnx.load_model_from_string(member.read()).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["DynamicQuantizeLinear"] == ops["MatMulInteger"] == 0
    constants = {init.name for init in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[str]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node.op_type)
    quantize = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize) >= 18  # per layer: Q/K/V input, output projection, down-projection
    for node in quantize:
        assert set(node.input[1:]) <= constants, node.name
        if made_by[node.input[0]].op_type == "Gather":
            continue  # an embedding table's rows
        (dequantize,) = (n for n in graph.node if node.output[0] in n.input)
        assert set(readers[dequantize.output[0]]) == {"MatMul"}, node.name
    outlier_gathers = [node for node in graph.node if node.name.endswith("_outlier_gather")]
    assert outlier_gathers  # the down-projections' largest channels, multiplied in fp32
    for node in outlier_gathers:
        assert made_by[node.input[0]].op_type != "DequantizeLinear", node.name


def test_widened_ranges_keep_six_significant_bits() -> None:
    """Calibrated bounds are rounded away from zero onto a coarse grid, so that the last
    bits a CPU's kernels change do not change the graph's scales (or its sha256)."""
    from models.build import widen

    for value in (6.334993362426758, -2.766230583190918, 24.605951, -0.16997123, 1e-3):
        got = widen(value)
        assert abs(got) >= abs(value)
        assert got * value > 0
        assert abs(got - value) < abs(value) * 2**-5
        assert widen(got) == got
        mantissa = abs(got) / 2.0 ** math.floor(math.log2(abs(got)))
        assert (mantissa * 2**5).is_integer()
    assert widen(6.334993362426758) == widen(6.334993362426758 * (1 + 1e-6)) == 6.375
    assert widen(0.0) == 0.0


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


def _fake_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, graph: bytes, parity: dict[str, float]
) -> None:
    """A build whose stages write tiny files and whose parity is given: no weights."""
    from models import build

    def stage(version: str, src: Path, work: Path) -> Any:
        (work / version).mkdir(parents=True)
        (work / version / "model.onnx").write_bytes(graph + version.encode())
        return build._meta("onnx", "model.onnx")

    monkeypatch.setattr(build, "source_dir", lambda: tmp_path / "weights")
    monkeypatch.setattr(build, "_stage", stage)
    monkeypatch.setattr(build, "_check_parity", lambda version, package, src: parity[version])


def test_a_failed_build_changes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """v2 failing parity after v1 was rebuilt leaves v1's old bytes and the manifest
    that pins them: every package is staged and moved into place only when all pass."""
    from models.build import _manifest_ok, build

    out = tmp_path / "artifacts"
    _fake_build(monkeypatch, tmp_path, b"old graph", {"v1": 1.0, "v2": 1.0, "v1-torch": 1.0})
    build(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    _fake_build(monkeypatch, tmp_path, b"new graph", {"v1": 1.0, "v2": 0.5, "v1-torch": 1.0})
    with pytest.raises(SystemExit, match=r"v2: parity 0\.500000 below 0\.98"):
        build(out, force=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "minilm"]
    assert _manifest_ok(out)


def test_a_build_that_passes_replaces_every_package_and_the_manifest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json

    from models.build import _manifest_ok, build

    out = tmp_path / "artifacts"
    passing = {"v1": 1.0, "v2": 1.0, "v1-torch": 1.0}
    _fake_build(monkeypatch, tmp_path, b"old graph", passing)
    first = build(out)
    _fake_build(monkeypatch, tmp_path, b"new graph", passing)
    second = build(out, force=True)
    assert json.loads((out / "manifest.json").read_text()) == second != first
    assert _manifest_ok(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "minilm"]
