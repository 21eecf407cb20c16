"""How much CPU this process may use, for the thread counts of its runtimes and builds.

A pod's CPU limit is a CFS quota on its cgroup, not an affinity: every CPU of the node
stays visible and schedulable, but the container gets only the quota's share of time.
A thread count taken from the node (`os.cpu_count()`, a runtime's default) then starts
more threads than the quota can run at once; runtimes whose threads wait for each other
at every parallel step spin away the quota and stall (torch on a one-CPU quota, 2
threads against 1: 67-69 against 91-97 texts/s at batch 1; README, "CPU limits").
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_ROOT = Path("/sys/devices/system/cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def physical_cores(
    cpu_root: Path = CPU_ROOT, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> int:
    """Physical cores among the CPUs this process may run on (hyperthreads share a core;
    the topology as Linux reports it, each CPU its own core where it does not), no more
    than the CPU limit of its cgroup (`cpu_limit`): the intra-op thread count of a model
    runtime left to choose it."""
    cores = set()
    for cpu in sorted(os.sched_getaffinity(0)):
        topology = cpu_root / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            cores.add(("cpu", str(cpu)))
            continue
        cores.add((package, core))
    limit = cpu_limit(cgroup_root, self_cgroup)
    return max(1, min(len(cores), limit) if limit else len(cores))


def intra_op_threads(configured: int) -> int:
    """A model runtime's intra-op thread count: `configured`, or with 0 one per physical
    core this process may run on, within its cgroup's CPU limit (`physical_cores`; ONNX
    Runtime's and torch's own defaults count the machine's cores, whatever the limit)."""
    return configured if configured > 0 else physical_cores()


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """The CPUs in this process's affinity, no more than its cgroup's CPU limit: the
    thread count of a bulk job that does not wait for its threads (an index build)."""
    cpus = len(os.sched_getaffinity(0))
    limit = cpu_limit(cgroup_root, self_cgroup)
    return max(1, min(cpus, limit) if limit else cpus)


def cpu_limit(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """The CPU limit this process runs under, rounded up to whole CPUs, or None without
    one: the smallest CFS quota of its own cgroup and every cgroup above it (cgroup v2's
    `cpu.max`, v1's `cpu.cfs_quota_us` over `cpu.cfs_period_us`). Its own cgroup is the
    one `/proc/self/cgroup` names (a systemd unit's on a host); inside a container that
    is the mount's root, which is always read as well."""
    v2_path, v1_path = _own_cgroups(self_cgroup)
    limits = [
        *(_v2_limit(d) for d in _chain(cgroup_root, v2_path)),
        *(_v1_limit(d) for d in _chain(cgroup_root / "cpu", v1_path)),
    ]
    found = [limit for limit in limits if limit is not None]
    return max(1, math.ceil(min(found))) if found else None


def _own_cgroups(self_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup in the v2 hierarchy and in v1's cpu controller ("/" when
    unknown)."""
    v2 = v1 = "/"
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _chain(mount: Path, path: str) -> list[Path]:
    """The cgroup directory of `path` under `mount` and each one above it, the mount's
    root last."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
