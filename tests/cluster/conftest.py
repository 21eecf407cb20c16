"""What the cluster tests share: a head and a worker node on this machine."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_util import RayNode, start_head, start_worker


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[RayNode, RayNode]]:
    """A head node (resource `servekit_head`) and a worker node (`servekit_worker`),
    4 CPUs each; the worker is killed, the head stopped, afterwards."""
    head = start_head(tmp_path, num_cpus=4, resources='{"servekit_head": 1}')
    worker = None
    try:
        worker = start_worker(head, tmp_path, num_cpus=4, resources='{"servekit_worker": 1}')
        yield head, worker
    finally:
        if worker is not None:
            worker.stop(signal.SIGKILL)
        head.stop()
