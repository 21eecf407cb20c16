"""servekit's AWS footprint: VPC, EKS with CPU and GPU node groups, the artifact bucket,
the image repository, the Ray pods' IAM role (IRSA) and the KubeRay operator.

Security properties the tests assert on the synthesized template:
- the artifact bucket is encrypted, versioned, blocks every kind of public access and
  refuses plain HTTP;
- the Ray pods' role can be assumed only by the `servekit-ray` service account, and may
  only read that bucket;
- images are scanned on push and their tags are immutable.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_eks as eks
from aws_cdk import aws_s3 as s3
from aws_cdk.lambda_layer_kubectl_v33 import KubectlV33Layer
from constructs import Construct

NAMESPACE = "servekit"
SERVICE_ACCOUNT = "servekit-ray"
KUBERAY_CHART_VERSION = "1.4.2"


class ServekitStack(Stack):
    """Everything the RayService in cluster/rayservice.yaml runs on."""

    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]

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
            endpoint_access=eks.EndpointAccess.PUBLIC_AND_PRIVATE,
        )
        cluster.add_nodegroup_capacity(
            "Cpu",
            instance_types=[ec2.InstanceType("m7i.2xlarge")],
            min_size=1,
            max_size=8,
            labels={"servekit.io/pool": "cpu"},
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )
        cluster.add_nodegroup_capacity(
            "Gpu",
            instance_types=[ec2.InstanceType("g5.2xlarge")],
            ami_type=eks.NodegroupAmiType.AL2023_X86_64_NVIDIA,
            min_size=0,
            max_size=4,
            labels={"servekit.io/pool": "gpu"},
            taints=[
                eks.TaintSpec(
                    effect=eks.TaintEffect.NO_SCHEDULE, key="nvidia.com/gpu", value="present"
                )
            ],
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )

        namespace = cluster.add_manifest(
            "Namespace",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        )
        ray_pods = cluster.add_service_account("RayPods", name=SERVICE_ACCOUNT, namespace=NAMESPACE)
        ray_pods.node.add_dependency(namespace)
        # Read-only, and only this bucket.
        artifacts.grant_read(ray_pods)

        cluster.add_helm_chart(
            "KubeRay",
            chart="kuberay-operator",
            repository="https://ray-project.github.io/kuberay-helm/",
            version=KUBERAY_CHART_VERSION,
            namespace="kuberay-system",
            create_namespace=True,
        )

        CfnOutput(self, "ArtifactBucketName", value=artifacts.bucket_name)
        CfnOutput(self, "ImageRepositoryUri", value=images.repository_uri)
        CfnOutput(self, "ClusterName", value=cluster.cluster_name)
        CfnOutput(self, "RayPodsRoleArn", value=ray_pods.role.role_arn)
