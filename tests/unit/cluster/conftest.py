"""The CDK stack, synthesized once for every test module that asserts on it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.cluster.stack_util import load_stack_module, synth


@pytest.fixture(scope="session")
def stack_module() -> Any:
    return load_stack_module()


@pytest.fixture(scope="session")
def template(stack_module: Any) -> Any:
    return synth(stack_module)
