"""Every Ray pod of the RayService fits on a node of the pool it is sent to.

A pod whose requests exceed what a node leaves allocatable stays Pending for good, and
the Cluster Autoscaler adds no node for it (none would fit it either). What a node leaves
is its instance type's size less what EKS reserves for the kubelet and the system, its
eviction threshold and the DaemonSets every node runs.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import yaml

from servekit import kube
from tests.unit.cluster.stack_util import needs_node, resources

pytestmark = needs_node

GIB = 2**30
MIB = 2**20
# The stack's instance types: vCPUs, memory (GiB), NVIDIA GPUs and the most pods the VPC
# CNI gives a node of that type (amazon-eks-ami's eni-max-pods.txt), which EKS sizes the
# kubelet's memory reservation by.
INSTANCE_TYPES = {
    "m7i.2xlarge": (8, 32, 0, 58),
    "g5.2xlarge": (8, 32, 1, 58),
}
# The kernel and firmware keep part of an instance's memory: the node reports about
# 94-95 % of it as capacity; 93 % leaves a margin.
MEMORY_SEEN_BY_THE_NODE = Decimal("0.93")
# The kubelet's hard eviction threshold on EKS (memory.available<100Mi).
EVICTION_HARD_BYTES = 100 * MIB
# CPU requests of the DaemonSets on every node: the VPC CNI (aws-node, 25m) and kube-proxy
# (100m), as the EKS add-ons ship them; the NVIDIA device plugin requests none.
DAEMONSET_CPU_MILLI = 25 + 100


def cpu_milli(quantity: str | int) -> Decimal:
    """A Kubernetes CPU quantity in millicores."""
    text = str(quantity)
    return Decimal(text[:-1]) if text.endswith("m") else Decimal(text) * 1000


def memory_bytes(quantity: str | int) -> Decimal:
    """A Kubernetes memory quantity in bytes (binary and decimal suffixes)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    assert found is not None, quantity
    number, suffix = found.groups()
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    scale |= {"G": 10**9, "T": 10**12, "": 1}
    return Decimal(number) * scale[suffix or ""]


def eks_reserved_cpu_milli(vcpus: int) -> Decimal:
    """What EKS reserves of a node's CPU for the kubelet: 6 % of the first core, 1 % of
    the second, 0.5 % of the next two and 0.25 % of every core above four."""
    shares = [Decimal(60), Decimal(10), Decimal(5), Decimal(5)] + [Decimal("2.5")] * 60
    return sum(shares[:vcpus], Decimal(0))


def allocatable(instance_type: str) -> tuple[Decimal, Decimal, int]:
    """CPU (millicores), memory (bytes) and GPUs a pod may request on a node of the type."""
    vcpus, memory_gib, gpus, max_pods = INSTANCE_TYPES[instance_type]
    cpu = vcpus * 1000 - eks_reserved_cpu_milli(vcpus) - DAEMONSET_CPU_MILLI
    kube_reserved = (255 + 11 * max_pods) * MIB
    memory = memory_gib * GIB * MEMORY_SEEN_BY_THE_NODE - kube_reserved - EVICTION_HARD_BYTES
    return cpu, memory, gpus


def test_allocatable_follows_eks_reservations() -> None:
    cpu, memory, gpus = allocatable("g5.2xlarge")
    assert cpu == 8000 - 90 - 125
    assert memory_bytes("28Gi") < memory < memory_bytes("30Gi")
    assert gpus == 1
    assert [cpu_milli(q) for q in ("500m", "4", 1)] == [500, 4000, 1000]
    assert [memory_bytes(q) for q in ("512Mi", "1G")] == [512 * MIB, 10**9]


def _pods(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each group's pod spec as KubeRay creates it: the head also runs the autoscaler,
    a container of its own with `autoscalerOptions.resources`."""
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    autoscaler = {"name": "autoscaler", **cluster["autoscalerOptions"]}
    pods = [("head", {**head, "containers": [*head["containers"], autoscaler]})]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return pods


def _requests(pod: dict[str, Any]) -> tuple[Decimal, Decimal, int]:
    cpu, memory, gpus = Decimal(0), Decimal(0), 0
    for container in pod["containers"]:
        asked = container["resources"]["requests"]
        cpu += cpu_milli(asked["cpu"])
        memory += memory_bytes(asked["memory"])
        gpus += int(asked.get("nvidia.com/gpu", 0))
    return cpu, memory, gpus


def _tolerated(pod: dict[str, Any], taint: dict[str, str]) -> bool:
    effect = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute"}[taint["Effect"]]
    return any(
        t["key"] == taint["Key"]
        and t.get("effect", effect) == effect
        and (t["operator"] == "Exists" or t.get("value") == taint["Value"])
        for t in pod.get("tolerations", [])
    )


def _pools_for(pod: dict[str, Any], node_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node groups the scheduler may place the pod on: labels its node selector
    asks for, taints it tolerates."""
    return [
        group
        for group in node_groups
        if pod.get("nodeSelector", {}).items() <= group["Labels"].items()
        and all(_tolerated(pod, taint) for taint in group.get("Taints", []))
    ]


def _unfit(manifest: dict[str, Any], template: Any) -> list[str]:
    groups = [g["Properties"] for g in resources(template, "AWS::EKS::Nodegroup").values()]
    problems = []
    for name, pod in _pods(manifest):
        pools = _pools_for(pod, groups)
        if not pools:
            problems.append(f"{name}: no node group takes it")
        cpu, memory, gpus = _requests(pod)
        for pool in pools:
            for instance_type in pool["InstanceTypes"]:
                free_cpu, free_memory, free_gpus = allocatable(instance_type)
                if cpu > free_cpu or memory > free_memory or gpus > free_gpus:
                    problems.append(
                        f"{name}: asks {cpu:.0f}m CPU, {memory / GIB:.1f} GiB, {gpus} GPU; "
                        f"a {instance_type} leaves {free_cpu:.0f}m, {free_memory / GIB:.1f} "
                        f"GiB, {free_gpus}"
                    )
    return problems


def test_every_ray_pod_fits_on_a_node_of_its_pool(template: Any) -> None:
    manifest = yaml.safe_load(kube.MANIFEST.read_text())
    assert _unfit(manifest, template) == []


def test_a_pod_asking_for_a_whole_node_is_refused(template: Any) -> None:
    manifest = yaml.safe_load(kube.MANIFEST.read_text())
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (gpu,) = (g for g in groups if g["groupName"] == "gpu")
    (container,) = gpu["template"]["spec"]["containers"]
    container["resources"]["requests"] |= {"cpu": "8", "memory": "32Gi"}
    (problem,) = _unfit(manifest, template)
    assert problem.startswith("gpu: asks 8000m CPU, 32.0 GiB, 1 GPU; a g5.2xlarge leaves")


def test_every_instance_type_of_the_stack_has_its_size_here(template: Any) -> None:
    for group in resources(template, "AWS::EKS::Nodegroup").values():
        assert set(group["Properties"]["InstanceTypes"]) <= set(INSTANCE_TYPES), group
