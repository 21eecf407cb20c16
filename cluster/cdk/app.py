"""CDK app: `cdk deploy` from cluster/cdk (see the README's SRE runbook)."""

from __future__ import annotations

import os

import aws_cdk as cdk
from servekit_stack import ServekitStack

app = cdk.App()
account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
ServekitStack(
    app,
    "Servekit",
    env=cdk.Environment(account=account, region=region) if account and region else None,
)
app.synth()
