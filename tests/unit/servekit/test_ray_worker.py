"""The setup every worker of a local instance runs: no pyarrow for Ray's serializers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pyarrow")  # without it there is nothing Ray would import

# In a fresh interpreter: Ray's serialization add-ons, as a worker or driver applies
# them when it creates its serialization context; which types they register; whether
# pyarrow got imported; then that pyarrow still imports.
_PROBE = textwrap.dedent(
    """
    import sys
    from ray.util import serialization_addons
    from servekit import ray_worker

    class Context:
        registered = []

        def _register_cloudpickle_serializer(self, cls, **kwargs):
            self.registered.append(cls.__module__.split(".")[0])

        def _register_cloudpickle_reducer(self, cls, reducer):
            self.registered.append(cls.__module__.split(".")[0])

    if sys.argv[1] == "setup":
        ray_worker.setup()
    serialization_addons.apply(Context())
    print("pyarrow" in sys.modules, "pyarrow" in Context.registered)
    import pyarrow  # still importable for whoever needs it
    """
)


def _probe(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_ray_imports_pyarrow_for_its_serializers_unless_set_up() -> None:
    # Without the setup: Ray imports pyarrow and registers serializers for its types
    # (what this guards against, so the check below can tell the difference).
    assert _probe("plain") == "True True"
    assert _probe("setup") == "False False"
