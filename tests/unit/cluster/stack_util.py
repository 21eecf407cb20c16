"""Synthesizing the CDK app offline, and reading the template it makes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

CDK_DIR = REPO_ROOT / "cluster" / "cdk"
# An address in the stack's private subnets, where the registry and Redis live (the
# NetworkPolicy tests check the Ray pods may reach it; the stack's tests that it is).
PRIVATE_SUBNET_ADDRESS = "10.0.64.20"
# The cluster's administrator, which the stack requires (`servekit:adminRoleArn`); with
# a path, as IAM Identity Center's roles have.
ADMIN_ROLE_ARN = "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/PlatformAdmin"

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="CDK synthesis needs Node.js")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


def load_stack_module() -> Any:
    """`cluster/cdk/servekit_stack.py`, imported as `cdk deploy` imports it."""
    sys.path.insert(0, str(CDK_DIR))
    try:
        import servekit_stack
    finally:
        sys.path.remove(str(CDK_DIR))
    return servekit_stack


def synth(stack_module: Any, context: dict[str, Any] | None = None) -> Any:
    """The stack's `aws_cdk.assertions.Template`, with these context values (and the
    admin role, unless they set it)."""
    from aws_cdk import App
    from aws_cdk.assertions import Template

    app = App(context={stack_module.ADMIN_ROLE_ARN_CONTEXT: ADMIN_ROLE_ARN, **(context or {})})
    return Template.from_stack(stack_module.ServekitStack(app, "Servekit"))


def resources(template: Any, kind: str) -> dict[str, Any]:
    """The template's resources of one type, by logical id."""
    found: dict[str, Any] = template.find_resources(kind)
    return found


def one(template: Any, kind: str) -> tuple[str, Any]:
    """The only resource of a type: its logical id and its definition."""
    (item,) = resources(template, kind).items()
    return item


def irsa_role(template: Any, namespace: str, service_account: str) -> tuple[str, Any]:
    """The IRSA role whose trust condition names that service account, and no other."""
    everything = template.to_json()["Resources"]
    subject = re.compile(rf"system:serviceaccount:{namespace}:{service_account}(?![\w-])")
    matches = []
    for name, role in resources(template, "AWS::IAM::Role").items():
        trust = json.dumps(role["Properties"]["AssumeRolePolicyDocument"])
        if "AssumeRoleWithWebIdentity" not in trust:
            continue
        # The condition is computed by a CfnJson custom resource at deploy time.
        condition_ids = [rid for rid in everything if f'"{rid}"' in trust]
        text = trust + "".join(json.dumps(everything[rid]) for rid in condition_ids)
        if subject.search(text):
            matches.append((name, role))
    assert len(matches) == 1
    return matches[0]


def ray_pods_role(template: Any) -> tuple[str, Any]:
    """The IRSA role of the servekit-ray service account (the Ray head's)."""
    return irsa_role(template, "servekit", "servekit-ray")


def ray_workers_role(template: Any) -> tuple[str, Any]:
    """The IRSA role of the servekit-ray-worker service account (the Ray workers')."""
    return irsa_role(template, "servekit", "servekit-ray-worker")


def role_statements(template: Any, role_id: str) -> list[Any]:
    """The statements of the one inline policy attached to a role."""
    policies = [
        p
        for p in resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
    ]
    assert len(policies) == 1
    statements: list[Any] = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    return statements


def helm_chart(template: Any, chart: str) -> Any:
    """The properties of the one Helm release of a chart."""
    (found,) = (
        c["Properties"]
        for c in resources(template, "Custom::AWSCDK-EKS-HelmChart").values()
        if c["Properties"]["Chart"] == chart
    )
    return found


def text(value: Any) -> str:
    """A template string value with its intrinsic parts as `<Ref:id>` / `<GetAtt:id.attr>`."""
    if isinstance(value, str):
        return value
    (function, args), *rest = value.items()
    assert not rest, value
    if function == "Ref":
        return f"<Ref:{args}>"
    if function == "Fn::GetAtt":
        return f"<GetAtt:{args[0]}.{args[1]}>"
    assert function == "Fn::Join", value
    assert args[0] == "", value
    return "".join(text(part) for part in args[1])


def helm_values(chart: Any) -> Any:
    """A Helm release's values, with references as `<Ref:id>` strings."""
    return json.loads(text(chart["Values"]))


def as_list(value: Any) -> list[Any]:
    """An IAM policy field that is a value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]
