"""A version's runtime settings as the config file writes them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from configs.schema import ModelSpec, VersionSpec

_BASE = {"artifact": {"uri": "artifacts/minilm/v1.tar", "sha256": "0" * 64}, "runtime": "onnx"}


def test_threads_spin_only_during_a_run_by_default() -> None:
    assert VersionSpec.model_validate(_BASE).intra_op_spinning == "during_run"


@pytest.mark.parametrize(
    ("written", "read"),
    [(True, "always"), (False, "never"), ("always", "always"), ("never", "never")],
)
def test_spinning_accepts_the_policy_or_a_boolean(written: object, read: str) -> None:
    spec = VersionSpec.model_validate({**_BASE, "intra_op_spinning": written})
    assert spec.intra_op_spinning == read


def test_unknown_spinning_policy_names_the_field() -> None:
    with pytest.raises(ValidationError, match="intra_op_spinning"):
        VersionSpec.model_validate({**_BASE, "intra_op_spinning": "sometimes"})


@pytest.mark.parametrize(
    ("placement", "runtime", "ok"),
    [("inline", "onnx", True), ("dedicated", "onnx", True), ("inline", "torch", False)],
)
def test_busy_lanes_need_an_onnx_version(placement: str, runtime: str, ok: bool) -> None:
    version = {**_BASE, "runtime": runtime, "busy_lanes": 2}
    doc = {"placement": placement, "versions": {"v1": version}}
    if ok:
        assert ModelSpec.model_validate(doc).versions["v1"].busy_lanes == 2
    else:
        with pytest.raises(ValidationError, match=r"versions\.v1\.busy_lanes"):
            ModelSpec.model_validate(doc)
    assert VersionSpec.model_validate(_BASE).busy_lanes == 1  # off unless asked for
