"""What the node groups need besides themselves: something that adds and removes nodes,
and something that makes the GPUs schedulable.

- The Kubernetes Cluster Autoscaler. Ray's autoscaler adds worker pods between each
  group's min and max (cluster/settings.yaml); the node groups start at their minimum
  size (one CPU node, no GPU node), so without it a pod that fits on no node stays
  Pending. It finds the managed node groups' Auto Scaling groups by the tags EKS puts on
  them, reads their labels and taints from EKS (a group at zero nodes has none to look
  at), and may resize only the Auto Scaling groups of this cluster. Its role (IRSA) is
  its service account's alone.
- The NVIDIA device plugin, on the GPU nodes only. The EKS NVIDIA AMI brings the driver
  and the container runtime, not the plugin: without it no node advertises
  `nvidia.com/gpu`, and a GPU worker pod (which requests one) never schedules.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_eks as eks
from aws_cdk import aws_iam as iam

# The label that puts Ray pods on a node group (`node_selector` in cluster/settings.yaml).
POOL_LABEL = "servekit.io/pool"
# The taint on GPU nodes: only pods that tolerate it (GPU workers, the device plugin) land.
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
# The GPU type label the Cluster Autoscaler's AWS provider reads: a new GPU node counts as
# the GPU it will advertise before the device plugin has started on it, so one pending
# GPU pod does not add several nodes. g5 instances carry an NVIDIA A10G.
GPU_TYPE_LABELS = {"k8s.amazonaws.com/accelerator": "nvidia-a10g"}

NVIDIA_DEVICE_PLUGIN_CHART = "nvidia-device-plugin"
NVIDIA_DEVICE_PLUGIN_REPOSITORY = "https://nvidia.github.io/k8s-device-plugin"
NVIDIA_DEVICE_PLUGIN_CHART_VERSION = "0.19.3"
NVIDIA_DEVICE_PLUGIN_NAMESPACE = "nvidia-device-plugin"

CLUSTER_AUTOSCALER_CHART = "cluster-autoscaler"
CLUSTER_AUTOSCALER_REPOSITORY = "https://kubernetes.github.io/autoscaler"
CLUSTER_AUTOSCALER_CHART_VERSION = "9.50.1"
# The autoscaler's minor version follows the cluster's Kubernetes version (a test checks
# it against the stack's): the chart's default image is 1.33.0, this its latest patch.
CLUSTER_AUTOSCALER_IMAGE_TAG = "v1.33.6"
CLUSTER_AUTOSCALER_NAMESPACE = "kube-system"
CLUSTER_AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
# What auto-discovery and scale-from-zero read; nothing here changes anything.
CLUSTER_AUTOSCALER_READS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeScalingActivities",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:GetInstanceTypesFromInstanceRequirements",
    "eks:DescribeNodegroup",
)
# What resizes a group: allowed only on the Auto Scaling groups of this cluster's managed
# node groups, by the tags EKS puts on them.
CLUSTER_AUTOSCALER_WRITES = (
    "autoscaling:SetDesiredCapacity",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
)


def add_cluster_autoscaler(cluster: eks.Cluster) -> eks.HelmChart:
    """The Cluster Autoscaler (Helm), with a role that may resize only this cluster's
    node groups."""
    account = cluster.add_service_account(
        "ClusterAutoscaler",
        name=CLUSTER_AUTOSCALER_SERVICE_ACCOUNT,
        namespace=CLUSTER_AUTOSCALER_NAMESPACE,
    )
    account.add_to_principal_policy(
        iam.PolicyStatement(actions=list(CLUSTER_AUTOSCALER_READS), resources=["*"])
    )
    account.add_to_principal_policy(
        iam.PolicyStatement(
            actions=list(CLUSTER_AUTOSCALER_WRITES),
            # Auto Scaling group ARNs hold a generated id: the tags name the groups.
            resources=["*"],
            conditions={
                "StringEquals": {
                    "aws:ResourceTag/eks:cluster-name": cluster.cluster_name,
                    "aws:ResourceTag/k8s.io/cluster-autoscaler/enabled": "true",
                }
            },
        )
    )
    chart = cluster.add_helm_chart(
        "ClusterAutoscaler",
        chart=CLUSTER_AUTOSCALER_CHART,
        repository=CLUSTER_AUTOSCALER_REPOSITORY,
        version=CLUSTER_AUTOSCALER_CHART_VERSION,
        release=CLUSTER_AUTOSCALER_CHART,
        namespace=CLUSTER_AUTOSCALER_NAMESPACE,
        values={
            "cloudProvider": "aws",
            # The Deployment's name: `kubectl -n kube-system logs deploy/cluster-autoscaler`.
            "fullnameOverride": CLUSTER_AUTOSCALER_CHART,
            "awsRegion": Stack.of(cluster).region,
            # Node groups tagged k8s.io/cluster-autoscaler/enabled and .../<cluster>.
            "autoDiscovery": {"clusterName": cluster.cluster_name},
            "image": {"tag": CLUSTER_AUTOSCALER_IMAGE_TAG},
            "rbac": {
                "serviceAccount": {"create": False, "name": CLUSTER_AUTOSCALER_SERVICE_ACCOUNT}
            },
            "extraArgs": {
                # Of the groups a pending pod fits, the one that leaves least idle.
                "expander": "least-waste",
            },
        },
    )
    # The pod must start with its role: the service account first.
    chart.node.add_dependency(account)
    return chart


def add_nvidia_device_plugin(cluster: eks.Cluster, gpu_pool: str) -> eks.HelmChart:
    """The NVIDIA device plugin (Helm) as a DaemonSet on the nodes of the GPU pool."""
    only_gpu_nodes = {
        "matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": [gpu_pool]}]
    }
    return cluster.add_helm_chart(
        "NvidiaDevicePlugin",
        chart=NVIDIA_DEVICE_PLUGIN_CHART,
        repository=NVIDIA_DEVICE_PLUGIN_REPOSITORY,
        version=NVIDIA_DEVICE_PLUGIN_CHART_VERSION,
        release=NVIDIA_DEVICE_PLUGIN_CHART,
        namespace=NVIDIA_DEVICE_PLUGIN_NAMESPACE,
        create_namespace=True,
        values={
            # The chart's default affinity asks for labels of Node Feature Discovery,
            # which EKS nodes do not carry: the plugin would run nowhere. Helm replaces a
            # list of values whole, so this term is the only one.
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [only_gpu_nodes]
                    }
                }
            },
            "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
