"""The CPUs a process may use: affinity, physical cores and its cgroup's CPU limit, read
from fake sysfs and cgroup trees laid out as Linux lays them out."""

from __future__ import annotations

import os
from pathlib import Path

from models.cpus import cpu_limit, physical_cores, usable_cpus


def _self_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def _v1_quota(directory: Path, quota_us: int, period_us: int = 100_000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period_us}\n")


def test_physical_cores_count_each_core_once_within_the_affinity(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for cpu in cpus:  # hyperthreads: two CPUs a core
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{cpu // 2}\n")
    none = tmp_path / "no-cgroup"
    own = _self_cgroup(tmp_path, "0::/\n")
    assert physical_cores(tmp_path, none, own) == len({cpu // 2 for cpu in cpus})
    assert physical_cores(tmp_path / "absent", none, own) == len(cpus)  # a CPU a core
    assert usable_cpus(none, own) == len(cpus)


def test_a_containers_cpu_limit_caps_the_thread_count(tmp_path: Path) -> None:
    """A pod's CPU limit is a CFS quota, not an affinity: the node's every CPU stays
    visible, and one thread per core of a large node would fight over a few CPUs' time.
    Inside the container its cgroup is the mount's root."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    own_v2 = _self_cgroup(tmp_path, "0::/\n")
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cpu_limit(v2, own_v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(v2, own_v2) is None
    v1 = tmp_path / "v1"
    own_v1 = _self_cgroup(tmp_path, "4:memory:/\n3:cpu,cpuacct:/\n0::/\n")
    _v1_quota(v1 / "cpu", 100_000)
    assert cpu_limit(v1, own_v1) == 1
    assert physical_cores(tmp_path / "no-topology", v1, own_v1) == 1
    assert usable_cpus(v1, own_v1) == 1
    _v1_quota(v1 / "cpu", -1)
    assert cpu_limit(v1, own_v1) is None
    assert cpu_limit(tmp_path / "absent", own_v1) is None
    assert cpu_limit(v1, tmp_path / "no-self-cgroup") is None  # read as the root: none


def test_the_limit_of_the_processs_own_cgroup_and_those_above_it(tmp_path: Path) -> None:
    """On a host the process's cgroup is a path below the mount (a systemd unit's, or a
    container's seen without its own cgroup namespace); a quota on any cgroup above it
    limits it too, and the smallest one counts."""
    v2 = tmp_path / "v2"
    unit = v2 / "system.slice" / "servekit.service"
    unit.mkdir(parents=True)
    own = _self_cgroup(tmp_path, "0::/system.slice/servekit.service\n")
    assert cpu_limit(v2, own) is None
    (unit / "cpu.max").write_text("250000 100000\n")
    assert cpu_limit(v2, own) == 3
    (v2 / "system.slice" / "cpu.max").write_text("120000 100000\n")  # the slice's: 1.2
    assert cpu_limit(v2, own) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(v2, own) == 2

    v1 = tmp_path / "v1"
    own_v1 = _self_cgroup(tmp_path, "2:cpuacct,cpu:/kubepods/pod1/c1\n1:name=systemd:/x\n")
    _v1_quota(v1 / "cpu" / "kubepods" / "pod1" / "c1", 50_000)  # half a CPU
    _v1_quota(v1 / "cpu" / "kubepods", -1)
    assert cpu_limit(v1, own_v1) == 1
    # the path as the host names it, seen from a container where it does not exist: the
    # mount's root is the container's own cgroup
    _v1_quota(v1 / "cpu", 300_000)
    elsewhere = _self_cgroup(tmp_path, "2:cpu,cpuacct:/docker/abc\n")
    assert cpu_limit(v1, elsewhere) == 3
