"""What a long apply says while replicas start."""

from __future__ import annotations

from ray.serve._private.common import ReplicaState

from servekit.local import _replicas_text


def test_replica_states_read_as_a_sentence() -> None:
    states = {ReplicaState.RUNNING: 1, ReplicaState.STARTING: 1, ReplicaState.STOPPING: 0}
    assert _replicas_text(states) == "1 of 2 replicas running, 1 starting"
    assert _replicas_text({ReplicaState.RUNNING: 2}) == "2 of 2 replicas running"
    assert _replicas_text({}) == "0 of 0 replicas running"
