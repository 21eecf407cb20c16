"""The AWS CDK app synthesizes offline, holds its security properties, and lints clean."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.unit.cluster.stack_util import (
    ADMIN_ROLE_ARN,
    CDK_DIR,
    as_list,
    helm_chart,
    helm_values,
    irsa_role,
    needs_node,
    ray_pods_role,
    ray_workers_role,
    resources,
    role_statements,
    synth,
)

pytestmark = needs_node

S3_READ = ("s3:GetObject", "s3:GetBucket", "s3:List")


def test_artifact_bucket_is_private_encrypted_versioned(template: Any) -> None:
    from aws_cdk.assertions import Match

    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                ]
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
        },
    )
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            }
        },
    )


RAY_ROLES = pytest.mark.parametrize("ray_role", [ray_pods_role, ray_workers_role])


@RAY_ROLES
def test_ray_pods_role_is_irsa_for_one_service_account(template: Any, ray_role: Any) -> None:
    _, role = ray_role(template)
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert "StringEquals" in json.dumps(statement["Condition"])
    assert not role["Properties"].get("ManagedPolicyArns")


@RAY_ROLES
def test_ray_pods_may_only_read_the_artifact_bucket_and_the_serving_secret(
    template: Any, ray_role: Any
) -> None:
    name, _ = ray_role(template)
    (bucket_id,) = resources(template, "AWS::S3::Bucket")
    (secret_id,) = (
        sid
        for sid, s in resources(template, "AWS::SecretsManager::Secret").items()
        if s["Properties"].get("Name") == "servekit/serving"
    )
    policies = [
        p
        for p in resources(template, "AWS::IAM::Policy").values()
        if {"Ref": name} in p["Properties"]["Roles"]
    ]
    assert len(policies) == 1
    statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert set(statement) == {"Action", "Effect", "Resource"}, statement
        actions = as_list(statement["Action"])
        targets = as_list(statement["Resource"])
        if all(a.startswith("s3:") for a in actions):
            assert all(a.startswith(S3_READ) for a in actions), actions
            for target in targets:
                assert bucket_id in json.dumps(target), target
        else:
            assert sorted(actions) == [
                "secretsmanager:DescribeSecret",
                "secretsmanager:GetSecretValue",
            ]
            # That one secret: not the generated values it is composed of, nor the
            # registry's master secret.
            assert targets == [{"Ref": secret_id}]


def test_image_repository_scans_and_pins(template: Any) -> None:
    template.has_resource_properties(
        "AWS::ECR::Repository",
        {
            "ImageScanningConfiguration": {"ScanOnPush": True},
            "ImageTagMutability": "IMMUTABLE",
        },
    )


def test_node_groups_and_kuberay(template: Any) -> None:
    groups = list(resources(template, "AWS::EKS::Nodegroup").values())
    assert len(groups) == 2
    gpu = next(g for g in groups if g["Properties"].get("AmiType") == "AL2023_x86_64_NVIDIA")
    assert gpu["Properties"]["Taints"] == [
        {"Effect": "NO_SCHEDULE", "Key": "nvidia.com/gpu", "Value": "present"}
    ]
    assert gpu["Properties"]["Labels"] == {
        "servekit.io/pool": "gpu",
        "k8s.amazonaws.com/accelerator": "nvidia-a10g",
    }
    cpu = next(g for g in groups if g is not gpu)
    assert cpu["Properties"]["Labels"] == {"servekit.io/pool": "cpu"}
    charts = resources(template, "Custom::AWSCDK-EKS-HelmChart")
    assert {c["Properties"]["Chart"] for c in charts.values()} >= {
        "kuberay-operator",
        "cluster-autoscaler",
        "nvidia-device-plugin",
    }
    settings = (REPO_ROOT / "cluster" / "settings.yaml").read_text()
    assert "servekit.io/pool: gpu" in settings


def test_settings_name_the_service_accounts_the_stack_creates(stack_module: Any) -> None:
    from configs.cluster import load_cluster_settings

    settings = load_cluster_settings(REPO_ROOT / "cluster" / "settings.yaml")
    assert settings.namespace == stack_module.NAMESPACE
    assert settings.service_account == stack_module.SERVICE_ACCOUNT
    assert settings.worker_service_account == stack_module.WORKER_SERVICE_ACCOUNT


def test_kuberay_supports_token_auth_and_sits_where_the_policy_admits_it(template: Any) -> None:
    from configs.cluster import load_cluster_settings

    chart = helm_chart(template, "kuberay-operator")
    # The operator must send the Ray token on its dashboard calls: KubeRay 1.5.1 or later.
    version = tuple(int(part) for part in chart["Version"].split("."))
    assert version >= (1, 5, 1), version
    # The NetworkPolicy admits the operator's namespace to the dashboard port.
    settings = load_cluster_settings(REPO_ROOT / "cluster" / "settings.yaml")
    assert chart["Namespace"] == settings.network.operator_namespace


def _cluster_id(template: Any) -> str:
    (cluster_id,) = resources(template, "Custom::AWSCDK-EKS-Cluster")
    return cluster_id


def test_node_groups_grow_to_what_the_worker_groups_may_ask(template: Any) -> None:
    from configs.cluster import load_cluster_settings

    settings = load_cluster_settings(REPO_ROOT / "cluster" / "settings.yaml")
    groups = {
        g["Properties"]["Labels"]["servekit.io/pool"]: g["Properties"]
        for g in resources(template, "AWS::EKS::Nodegroup").values()
    }
    for worker in settings.worker_groups:
        pool = groups[worker.node_selector["servekit.io/pool"]]
        # At least a node per worker pod at its group's maximum (one GPU per g5.2xlarge).
        assert pool["ScalingConfig"]["MaxSize"] >= worker.max_replicas, worker.name


def _selects(term: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a node selector term (`In` expressions) selects a node with these labels."""
    assert set(term) == {"matchExpressions"}, term
    for expression in term["matchExpressions"]:
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _tolerates(tolerations: list[dict[str, str]], taint: dict[str, str]) -> bool:
    effect = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute"}[taint["Effect"]]
    return any(
        t["key"] == taint["Key"]
        and t.get("effect", effect) == effect
        and (t["operator"] == "Exists" or t.get("value") == taint["Value"])
        for t in tolerations
    )


def test_nvidia_device_plugin_runs_on_every_gpu_node_and_only_there(template: Any) -> None:
    chart = helm_chart(template, "nvidia-device-plugin")
    assert chart["Repository"] == "https://nvidia.github.io/k8s-device-plugin"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["Version"])
    assert chart["Namespace"] not in ("default", "servekit")
    values = helm_values(chart)
    affinity = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = affinity["nodeSelectorTerms"]
    for group in resources(template, "AWS::EKS::Nodegroup").values():
        props = group["Properties"]
        is_gpu = props.get("AmiType") == "AL2023_x86_64_NVIDIA"
        assert any(_selects(t, props["Labels"]) for t in terms) == is_gpu, props["Labels"]
        # Scheduled there despite the taint that keeps every other pod off.
        assert all(_tolerates(values["tolerations"], taint) for taint in props.get("Taints", []))
        if is_gpu:
            assert props["Taints"], "GPU nodes are tainted for GPU pods only"


def test_cluster_autoscaler_discovers_this_clusters_node_groups(template: Any) -> None:
    chart = helm_chart(template, "cluster-autoscaler")
    assert chart["Repository"] == "https://kubernetes.github.io/autoscaler"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["Version"])
    assert chart["Namespace"] == "kube-system"
    values = helm_values(chart)
    assert values["cloudProvider"] == "aws"
    assert values["autoDiscovery"] == {"clusterName": f"<Ref:{_cluster_id(template)}>"}
    assert values["awsRegion"]
    # Its service account is the stack's, with the role below.
    assert values["rbac"]["serviceAccount"] == {"create": False, "name": "cluster-autoscaler"}
    # The autoscaler's minor version is the cluster's Kubernetes minor version.
    (cluster,) = resources(template, "Custom::AWSCDK-EKS-Cluster").values()
    kubernetes = cluster["Properties"]["Config"]["version"]
    assert values["image"]["tag"].startswith(f"v{kubernetes}."), values["image"]


def test_cluster_autoscaler_may_resize_only_this_clusters_node_groups(template: Any) -> None:
    role_id, role = irsa_role(template, "kube-system", "cluster-autoscaler")
    assert not role["Properties"].get("ManagedPolicyArns")
    reads, writes = [], []
    for statement in role_statements(template, role_id):
        assert statement["Effect"] == "Allow"
        actions = as_list(statement["Action"])
        if "Condition" in statement:
            writes += actions
            assert statement["Resource"] == "*"
            assert statement["Condition"] == {
                "StringEquals": {
                    "aws:ResourceTag/eks:cluster-name": {"Ref": _cluster_id(template)},
                    "aws:ResourceTag/k8s.io/cluster-autoscaler/enabled": "true",
                }
            }
        else:
            reads += actions
    assert sorted(writes) == [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    # Everything else only reads; eks:DescribeNodegroup gives the labels and taints of a
    # group at zero nodes (the GPU group's start).
    assert "eks:DescribeNodegroup" in reads
    assert all(
        a.split(":")[1].startswith(("Describe", "GetInstanceTypesFromInstanceRequirements"))
        for a in reads
    ), reads


def _api_endpoint(template: Any) -> Any:
    (cluster,) = resources(template, "Custom::AWSCDK-EKS-Cluster").values()
    return cluster["Properties"]["Config"]["resourcesVpcConfig"]


def test_api_endpoint_is_private_by_default(template: Any) -> None:
    endpoint = _api_endpoint(template)
    assert endpoint["endpointPrivateAccess"] is True
    assert endpoint["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in endpoint


def test_api_endpoint_is_public_only_to_the_configured_cidrs(stack_module: Any) -> None:
    cidrs = "203.0.113.0/24, 198.51.100.7/32"
    endpoint = _api_endpoint(synth(stack_module, {stack_module.API_PUBLIC_CIDRS_CONTEXT: cidrs}))
    assert endpoint["endpointPrivateAccess"] is True
    assert endpoint["endpointPublicAccess"] is True
    assert endpoint["publicAccessCidrs"] == ["203.0.113.0/24", "198.51.100.7/32"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.0.0.0/0", "not allowed"),
        ("203.0.113.0/24,0.0.0.0/0", "not allowed"),
        ("::/0", "not allowed"),
        ("203.0.113.0/33", "is no CIDR"),
        ("office", "is no CIDR"),
        (42, "expected CIDRs"),
    ],
)
def test_api_public_cidrs_refuse_the_open_world(
    stack_module: Any, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stack_module.api_public_cidrs(value)
    assert stack_module.api_public_cidrs(["198.51.100.7/32"]) == ["198.51.100.7/32"]
    assert stack_module.api_public_cidrs(None) == []


def test_admin_role_administers_the_cluster_through_an_access_entry(template: Any) -> None:
    (cluster,) = resources(template, "Custom::AWSCDK-EKS-Cluster").values()
    assert cluster["Properties"]["Config"]["accessConfig"]["authenticationMode"] == (
        "API_AND_CONFIG_MAP"
    )
    # The only access entry: the creator's own (CloudFormation's role) is implicit.
    (entry,) = resources(template, "AWS::EKS::AccessEntry").values()
    assert entry["Properties"]["PrincipalArn"] == ADMIN_ROLE_ARN
    assert entry["Properties"]["AccessPolicies"] == [
        {
            "AccessScope": {"Type": "cluster"},
            "PolicyArn": {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                    ],
                ]
            },
        }
    ]


def test_outputs_the_kubeconfig_command_for_the_admin_role(template: Any) -> None:
    (command,) = (
        o["Value"]
        for name, o in template.to_json()["Outputs"].items()
        if name.startswith("EksConfigCommand")
    )
    (cluster_id,) = resources(template, "Custom::AWSCDK-EKS-Cluster")
    assert command == {
        "Fn::Join": [
            "",
            [
                "aws eks update-kubeconfig --name ",
                {"Ref": cluster_id},
                " --region ",
                {"Ref": "AWS::Region"},
                f" --role-arn {ADMIN_ROLE_ARN}",
            ],
        ]
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "servekit:adminRoleArn is not set"),
        ("", "servekit:adminRoleArn is not set"),
        ("arn:aws:iam::123456789012:user/alice", "expected an IAM role ARN"),
        ("arn:aws:sts::123456789012:assumed-role/Admin/alice", "expected an IAM role ARN"),
        ("PlatformAdmin", "expected an IAM role ARN"),
        (["arn:aws:iam::123456789012:role/Admin"], "expected an IAM role ARN"),
    ],
)
def test_admin_role_is_required(stack_module: Any, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stack_module.admin_role_arn(value)
    arn = "arn:aws:iam::123456789012:role/Admin"
    assert stack_module.admin_role_arn(arn) == arn


def test_stack_refuses_to_synthesize_without_an_admin_role(stack_module: Any) -> None:
    with pytest.raises(ValueError, match="cdk deploy -c servekit:adminRoleArn="):
        synth(stack_module, {stack_module.ADMIN_ROLE_ARN_CONTEXT: None})


def test_network_policies_are_enforced(template: Any) -> None:
    # Without the VPC CNI's network policy agent, EKS stores NetworkPolicies and
    # enforces none: cluster/networkpolicy.yaml would be decoration.
    (addon,) = resources(template, "AWS::EKS::Addon").values()
    assert addon["Properties"]["AddonName"] == "vpc-cni"
    assert json.loads(addon["Properties"]["ConfigurationValues"]) == {"enableNetworkPolicy": "true"}


def test_cfn_lint_passes(tmp_path: Path) -> None:
    out = tmp_path / "cdk.out"
    synth = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('app.py', run_name='__main__')"],
        cwd=CDK_DIR,
        env={
            **os.environ,
            "CDK_OUTDIR": str(out),
            "CDK_CONTEXT_JSON": json.dumps({"servekit:adminRoleArn": ADMIN_ROLE_ARN}),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert synth.returncode == 0, synth.stderr[-3000:]
    templates = sorted(out.glob("*.template.json"))
    assert templates
    # W3005 (a DependsOn that a Ref already implies) comes from the CDK's own EKS and
    # custom-resource constructs, not from this stack; every other rule applies.
    lint = subprocess.run(
        [
            str(Path(sys.executable).with_name("cfn-lint")),
            "--ignore-checks",
            "W3005",
            "--",
            *map(str, templates),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout[-4000:]
