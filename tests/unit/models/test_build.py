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
