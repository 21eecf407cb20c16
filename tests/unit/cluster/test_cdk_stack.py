"""The AWS CDK app synthesizes offline, holds its security properties, and lints clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

CDK_DIR = REPO_ROOT / "cluster" / "cdk"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="CDK synthesis needs Node.js")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@pytest.fixture(scope="module")
def stack_module() -> Any:
    sys.path.insert(0, str(CDK_DIR))
    try:
        import servekit_stack
    finally:
        sys.path.remove(str(CDK_DIR))
    return servekit_stack


def _synth(stack_module: Any, context: dict[str, Any] | None = None) -> Any:
    from aws_cdk import App
    from aws_cdk.assertions import Template

    app = App(context=context)
    return Template.from_stack(stack_module.ServekitStack(app, "Servekit"))


@pytest.fixture(scope="module")
def template(stack_module: Any) -> Any:
    return _synth(stack_module)


def _resources(template: Any, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(kind)
    return found


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


def _ray_pods_role(template: Any) -> tuple[str, Any]:
    """The IRSA role whose trust condition names the servekit-ray service account."""
    everything = template.to_json()["Resources"]
    matches = []
    for name, role in _resources(template, "AWS::IAM::Role").items():
        trust = json.dumps(role["Properties"]["AssumeRolePolicyDocument"])
        if "AssumeRoleWithWebIdentity" not in trust:
            continue
        # The condition is computed by a CfnJson custom resource at deploy time.
        condition_ids = [rid for rid in everything if f'"{rid}"' in trust]
        text = trust + "".join(json.dumps(everything[rid]) for rid in condition_ids)
        if "system:serviceaccount:servekit:servekit-ray" in text:
            matches.append((name, role))
    assert len(matches) == 1
    return matches[0]


def test_ray_pods_role_is_irsa_for_one_service_account(template: Any) -> None:
    _, role = _ray_pods_role(template)
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert "StringEquals" in json.dumps(statement["Condition"])
    assert not role["Properties"].get("ManagedPolicyArns")


def test_ray_pods_may_only_read_the_artifact_bucket(template: Any) -> None:
    name, _ = _ray_pods_role(template)
    (bucket_id,) = _resources(template, "AWS::S3::Bucket")
    policies = [
        p
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": name} in p["Properties"]["Roles"]
    ]
    assert len(policies) == 1
    statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert all(a.startswith(("s3:GetObject", "s3:GetBucket", "s3:List")) for a in actions), (
            actions
        )
        resources = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        for resource in resources:
            assert bucket_id in json.dumps(resource), resource
            assert resource != "*"


def test_image_repository_scans_and_pins(template: Any) -> None:
    template.has_resource_properties(
        "AWS::ECR::Repository",
        {
            "ImageScanningConfiguration": {"ScanOnPush": True},
            "ImageTagMutability": "IMMUTABLE",
        },
    )


def test_node_groups_and_kuberay(template: Any) -> None:
    groups = list(_resources(template, "AWS::EKS::Nodegroup").values())
    assert len(groups) == 2
    gpu = next(g for g in groups if g["Properties"].get("AmiType") == "AL2023_x86_64_NVIDIA")
    assert gpu["Properties"]["Taints"] == [
        {"Effect": "NO_SCHEDULE", "Key": "nvidia.com/gpu", "Value": "present"}
    ]
    assert gpu["Properties"]["Labels"] == {"servekit.io/pool": "gpu"}
    cpu = next(g for g in groups if g is not gpu)
    assert cpu["Properties"]["Labels"] == {"servekit.io/pool": "cpu"}
    charts = _resources(template, "Custom::AWSCDK-EKS-HelmChart")
    assert [c["Properties"]["Chart"] for c in charts.values()] == ["kuberay-operator"]
    settings = (REPO_ROOT / "cluster" / "settings.yaml").read_text()
    assert "servekit.io/pool: gpu" in settings
    assert "service_account: servekit-ray" in settings


def test_kuberay_supports_token_auth_and_sits_where_the_policy_admits_it(template: Any) -> None:
    from configs.cluster import load_cluster_settings

    (chart,) = _resources(template, "Custom::AWSCDK-EKS-HelmChart").values()
    # The operator must send the Ray token on its dashboard calls: KubeRay 1.5.1 or later.
    version = tuple(int(part) for part in chart["Properties"]["Version"].split("."))
    assert version >= (1, 5, 1), version
    # The NetworkPolicy admits the operator's namespace to the dashboard port.
    settings = load_cluster_settings(REPO_ROOT / "cluster" / "settings.yaml")
    assert chart["Properties"]["Namespace"] == settings.network.operator_namespace


def _api_endpoint(template: Any) -> Any:
    (cluster,) = _resources(template, "Custom::AWSCDK-EKS-Cluster").values()
    return cluster["Properties"]["Config"]["resourcesVpcConfig"]


def test_api_endpoint_is_private_by_default(template: Any) -> None:
    endpoint = _api_endpoint(template)
    assert endpoint["endpointPrivateAccess"] is True
    assert endpoint["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in endpoint


def test_api_endpoint_is_public_only_to_the_configured_cidrs(stack_module: Any) -> None:
    cidrs = "203.0.113.0/24, 198.51.100.7/32"
    endpoint = _api_endpoint(_synth(stack_module, {stack_module.API_PUBLIC_CIDRS_CONTEXT: cidrs}))
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


def test_network_policies_are_enforced(template: Any) -> None:
    # Without the VPC CNI's network policy agent, EKS stores NetworkPolicies and
    # enforces none: cluster/networkpolicy.yaml would be decoration.
    (addon,) = _resources(template, "AWS::EKS::Addon").values()
    assert addon["Properties"]["AddonName"] == "vpc-cni"
    assert json.loads(addon["Properties"]["ConfigurationValues"]) == {"enableNetworkPolicy": "true"}


def test_cfn_lint_passes(tmp_path: Path) -> None:
    out = tmp_path / "cdk.out"
    synth = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('app.py', run_name='__main__')"],
        cwd=CDK_DIR,
        env={**os.environ, "CDK_OUTDIR": str(out)},
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
