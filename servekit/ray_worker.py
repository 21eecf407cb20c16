"""What every Ray worker process of a local instance runs before its first task."""

from __future__ import annotations


def setup() -> None:
    """Skip Ray's Arrow serializers in this process (see `skip_arrow_serializers`)."""
    skip_arrow_serializers()


def skip_arrow_serializers() -> None:
    """Keep Ray from importing pyarrow here only to register its serializers.

    When pyarrow is installed (the `features` extra, and the development environment),
    Ray imports it in every worker and driver to register Ray Data's serializers for
    Arrow tables: about 22 MB of shared libraries resident in each process, six of
    them on a local instance, for types servekit never passes between processes.
    Arrow objects still travel if anything sends one (pickled, as without pyarrow's
    serializers), and pyarrow itself stays importable."""
    # A worker whose setup raises exits, so a Ray without this hook point is left as is
    # (tests/unit/servekit/test_ray_worker.py fails then, to say so).
    try:
        from ray._private import arrow_serialization
    except ImportError:
        return
    if hasattr(arrow_serialization, "_register_custom_datasets_serializers"):
        arrow_serialization._register_custom_datasets_serializers = _no_arrow_serializers


def _no_arrow_serializers(serialization_context: object) -> None:
    return None
