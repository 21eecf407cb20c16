"""servekit's AWS footprint: VPC, EKS with CPU and GPU node groups, the Cluster
Autoscaler that sizes them and the NVIDIA device plugin (cluster_addons.py), the
artifact bucket, the image repository, the Ray pods' IAM role (IRSA), the KubeRay
operator, and the stores of multi-tenant auth with their secret (serving_stores.py).

Security properties the tests assert on the synthesized template:
- the artifact bucket is encrypted, versioned, blocks every kind of public access and
  refuses plain HTTP;
- the Ray head's role can be assumed only by the `servekit-ray` service account, the
  workers' only by `servekit-ray-worker` (the head's carries the RBAC KubeRay binds for
  Ray's autoscaler, which workers must not have); each may only read that bucket and
  the serving secret, which no other principal may read;
- the tenant registry (RDS PostgreSQL) and Redis are encrypted, private, and admit
  only the Ray pods' security group, each on its own port;
- images are scanned on push and their tags are immutable;
- the Kubernetes API endpoint is private to the VPC, or public only to the CIDRs given
  in the context value `servekit:apiPublicCidrs` (never to every address);
- NetworkPolicies are enforced (the VPC CNI's network policy agent is on), so the Ray
  pods' policy in cluster/networkpolicy.yaml takes effect;
- exactly one IAM role administers the cluster: the one named by the context value
  `servekit:adminRoleArn`, through an EKS access entry (the stack refuses to synthesize
  without it: no one could run kubectl on the cluster it makes).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_eks as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk.lambda_layer_kubectl_v33 import KubectlV33Layer
from cluster_addons import (
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    GPU_TYPE_LABELS,
    POOL_LABEL,
    add_cluster_autoscaler,
    add_nvidia_device_plugin,
)
from constructs import Construct
from serving_stores import ServingStores

NAMESPACE = "servekit"
# `service_account` and `worker_service_account` in cluster/settings.yaml (a test checks).
SERVICE_ACCOUNT = "servekit-ray"
WORKER_SERVICE_ACCOUNT = "servekit-ray-worker"
# 1.5.1 is the first operator that sends the Ray token on its dashboard calls
# (authOptions in cluster/rayservice.yaml); the tests validate against 1.7.0's CRD.
KUBERAY_CHART_VERSION = "1.7.0"
# Must match `network.operator_namespace` in cluster/settings.yaml (a test checks it).
KUBERAY_NAMESPACE = "kuberay-system"
# Context value: who may reach the Kubernetes API endpoint from the internet, as a list
# or a comma-separated string of CIDRs (`cdk deploy -c servekit:apiPublicCidrs=...`).
# Unset: the endpoint is private, reachable only from inside the VPC.
API_PUBLIC_CIDRS_CONTEXT = "servekit:apiPublicCidrs"
# Context value: whether the tenant registry's database refuses deletion (default true;
# `cdk deploy -c servekit:registryDeletionProtection=false` before tearing a stack down).
REGISTRY_DELETION_PROTECTION_CONTEXT = "servekit:registryDeletionProtection"
# Context value: the IAM role that administers the cluster (kubectl, the README's
# runbook), `cdk deploy -c servekit:adminRoleArn=arn:aws:iam::<account>:role/<name>`.
# Required: EKS admits only the principals it is told of, and the stack's own creator is
# a role of CloudFormation's that no person assumes.
ADMIN_ROLE_ARN_CONTEXT = "servekit:adminRoleArn"
# Access entries take a role's ARN with its path (SSO roles have one).
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")


def api_public_cidrs(value: object) -> list[str]:
    """The CIDRs of the context value; refuses anything that opens the endpoint to all."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{API_PUBLIC_CIDRS_CONTEXT}: expected CIDRs, got {value!r}")
    cidrs = []
    for item in items:
        try:
            network = ipaddress.ip_network(item.strip())
        except ValueError as e:
            raise ValueError(f"{API_PUBLIC_CIDRS_CONTEXT}: {item.strip()!r} is no CIDR") from e
        if network.version != 4 or network.prefixlen == 0:
            raise ValueError(
                f"{API_PUBLIC_CIDRS_CONTEXT}: {network} is not allowed; name the IPv4 "
                "ranges that may reach the API, or leave it unset for a private endpoint"
            )
        cidrs.append(str(network))
    return cidrs


def registry_deletion_protection(value: object) -> bool:
    """The context value as a bool: on unless it says false."""
    if value is None or isinstance(value, bool):
        return value is not False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(
        f"{REGISTRY_DELETION_PROTECTION_CONTEXT}: expected true or false, got {value!r}"
    )


def admin_role_arn(value: object) -> str:
    """The context value: an IAM role's ARN, or a message that says how to give one."""
    if value is None or value == "":
        raise ValueError(
            f"{ADMIN_ROLE_ARN_CONTEXT} is not set: name the IAM role that administers the "
            f"cluster, `cdk deploy -c {ADMIN_ROLE_ARN_CONTEXT}=arn:aws:iam::<account>:role/"
            "<name>` (or the same key under `context` in cdk.json); without it no one can "
            "reach the Kubernetes API of the cluster this stack makes"
        )
    if not isinstance(value, str) or not _ROLE_ARN.match(value.strip()):
        raise ValueError(
            f"{ADMIN_ROLE_ARN_CONTEXT}: expected an IAM role ARN "
            f"(arn:aws:iam::<account>:role/<name>), got {value!r}"
        )
    return value.strip()


def endpoint_access(cidrs: list[str]) -> eks.EndpointAccess:
    """Private only without CIDRs; otherwise private plus public from those CIDRs."""
    if not cidrs:
        return eks.EndpointAccess.PRIVATE
    return eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(*cidrs)


class ServekitStack(Stack):
    """Everything the RayService in cluster/rayservice.yaml runs on."""

    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        # First, so that a missing value fails before anything is built.
        admin = iam.Role.from_role_arn(
            self,
            "Admin",
            admin_role_arn(self.node.try_get_context(ADMIN_ROLE_ARN_CONTEXT)),
            mutable=False,
        )

        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19
                ),
            ],
        )

        artifacts = s3.Bucket(
            self,
            "Artifacts",
            encryption=s3.BucketEncryption.S3_MANAGED,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
        )

        images = ecr.Repository(
            self,
            "Images",
            repository_name="servekit",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.AES_256,
            removal_policy=RemovalPolicy.RETAIN,
        )

        cluster = eks.Cluster(
            self,
            "Eks",
            version=eks.KubernetesVersion.V1_33,
            kubectl_layer=KubectlV33Layer(self, "Kubectl"),
            vpc=vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            default_capacity=0,
            # Access entries beside the aws-auth ConfigMap: the admin role gets one with
            # AmazonEKSClusterAdminPolicy, and the ConfigCommand output is the
            # `aws eks update-kubeconfig ... --role-arn <it>` to run.
            authentication_mode=eks.AuthenticationMode.API_AND_CONFIG_MAP,
            masters_role=admin,
            endpoint_access=endpoint_access(
                api_public_cidrs(self.node.try_get_context(API_PUBLIC_CIDRS_CONTEXT))
            ),
        )
        # The VPC CNI as a managed add-on with its network policy agent on: without it
        # EKS accepts NetworkPolicies and enforces none of them.
        eks.CfnAddon(
            self,
            "VpcCni",
            addon_name="vpc-cni",
            cluster_name=cluster.cluster_name,
            resolve_conflicts="OVERWRITE",
            configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
        )
        cluster.add_nodegroup_capacity(
            "Cpu",
            instance_types=[ec2.InstanceType("m7i.2xlarge")],
            min_size=1,
            max_size=8,
            labels={POOL_LABEL: "cpu"},
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )
        cluster.add_nodegroup_capacity(
            "Gpu",
            instance_types=[ec2.InstanceType("g5.2xlarge")],
            ami_type=eks.NodegroupAmiType.AL2023_X86_64_NVIDIA,
            min_size=0,
            max_size=4,
            labels={POOL_LABEL: "gpu", **GPU_TYPE_LABELS},
            taints=[
                eks.TaintSpec(
                    effect=eks.TaintEffect.NO_SCHEDULE, key=GPU_TAINT_KEY, value=GPU_TAINT_VALUE
                )
            ],
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )
        # Nodes follow the pods: the groups above start at their minimum size.
        add_cluster_autoscaler(cluster)
        # GPUs become a resource the scheduler sees (nvidia.com/gpu) only with the plugin.
        add_nvidia_device_plugin(cluster, gpu_pool="gpu")

        namespace = cluster.add_manifest(
            "Namespace",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        )
        # The head's, and the workers' own: KubeRay binds the Ray autoscaler's Role (patch
        # pods and RayClusters) to the head's service account.
        ray_pods = cluster.add_service_account("RayPods", name=SERVICE_ACCOUNT, namespace=NAMESPACE)
        ray_workers = cluster.add_service_account(
            "RayWorkers", name=WORKER_SERVICE_ACCOUNT, namespace=NAMESPACE
        )
        for account in (ray_pods, ray_workers):
            account.node.add_dependency(namespace)
            # Read-only, and only this bucket.
            artifacts.grant_read(account)

        # Managed node groups without a launch template carry the EKS cluster security
        # group, and with the VPC CNI the pods' traffic leaves through their nodes'
        # interfaces: that group is what the Ray pods' connections come from.
        stores = ServingStores(
            self,
            "Stores",
            vpc=vpc,
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
            clients=cluster.cluster_security_group,
            readers=[ray_pods.role, ray_workers.role],
            deletion_protection=registry_deletion_protection(
                self.node.try_get_context(REGISTRY_DELETION_PROTECTION_CONTEXT)
            ),
        )

        cluster.add_helm_chart(
            "KubeRay",
            chart="kuberay-operator",
            repository="https://ray-project.github.io/kuberay-helm/",
            version=KUBERAY_CHART_VERSION,
            namespace=KUBERAY_NAMESPACE,
            create_namespace=True,
        )

        CfnOutput(self, "ArtifactBucketName", value=artifacts.bucket_name)
        CfnOutput(self, "ImageRepositoryUri", value=images.repository_uri)
        CfnOutput(self, "ClusterName", value=cluster.cluster_name)
        CfnOutput(self, "RayPodsRoleArn", value=ray_pods.role.role_arn)
        CfnOutput(self, "RayWorkersRoleArn", value=ray_workers.role.role_arn)
        # `stores:` in cluster/settings.yaml.
        CfnOutput(self, "ServingSecretName", value=stores.secret.secret_name)
        CfnOutput(self, "RedisUrl", value=stores.redis_url)
        CfnOutput(self, "RegistryEndpoint", value=stores.registry.db_instance_endpoint_address)
