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
def template() -> Any:
    from aws_cdk import App
    from aws_cdk.assertions import Template

    sys.path.insert(0, str(CDK_DIR))
    try:
        from servekit_stack import ServekitStack
    finally:
        sys.path.remove(str(CDK_DIR))
    app = App()
    return Template.from_stack(ServekitStack(app, "Servekit"))


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
