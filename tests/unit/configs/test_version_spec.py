"""A version's runtime settings as the config file writes them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from configs.schema import VersionSpec

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
