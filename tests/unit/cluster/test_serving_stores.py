"""The stores of multi-tenant auth in the CDK stack: the serving secret only the Ray
pods' role reads, and a PostgreSQL and a Redis that only the Ray pods reach."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from typing import Any

import pytest
from redis.connection import SSLConnection, parse_url

from configs.cluster import load_cluster_settings
from servekit import kube
from tests.unit.cluster.stack_util import (
    PRIVATE_SUBNET_ADDRESS,
    as_list,
    needs_node,
    one,
    ray_pods_role,
    ray_workers_role,
    resources,
    synth,
    text,
)

pytestmark = needs_node

SERVING_SECRET = "servekit/serving"
SECRET_KEYS = {
    "hmac_secret",
    "admin_token",
    "redis_password",
    "registry_dsn",
    "cache_redis_url",
    "features_redis_url",
}
# The Redis database of each url in the secret; the rate limits' url (settings) has 0.
REDIS_DATABASES = {"cache_redis_url": 1, "features_redis_url": 2}
# `{{resolve:secretsmanager:<secret>:SecretString:<json key>::}}`, the secret a Ref.
DYNAMIC_REFERENCE = r"\{\{resolve:secretsmanager:<Ref:(\w+)>:SecretString:(\w*)::\}\}"


def _serving_secret(template: Any) -> tuple[str, Any]:
    (found,) = (
        (sid, s)
        for sid, s in resources(template, "AWS::SecretsManager::Secret").items()
        if s["Properties"].get("Name") == SERVING_SECRET
    )
    return found


def _generated(template: Any, secret_id: str) -> dict[str, Any]:
    """The generator settings of a secret whose value Secrets Manager generated."""
    secrets = resources(template, "AWS::SecretsManager::Secret")
    attachments = resources(template, "AWS::SecretsManager::SecretTargetAttachment")
    if secret_id in attachments:  # a Ref to the attachment is the attached secret
        secret_id = attachments[secret_id]["Properties"]["SecretId"]["Ref"]
    properties = secrets[secret_id]["Properties"]
    assert "SecretString" not in properties
    generator: dict[str, Any] = properties["GenerateSecretString"]
    return generator


def _serving_values(template: Any) -> dict[str, str]:
    _, secret = _serving_secret(template)
    values: dict[str, str] = json.loads(text(secret["Properties"]["SecretString"]))
    return values


# --- the serving secret -----------------------------------------------------------------


def test_serving_secret_holds_generated_values_and_no_literal_secret(template: Any) -> None:
    values = _serving_values(template)
    assert set(values) == SECRET_KEYS
    description = _serving_secret(template)[1]["Properties"]["Description"]
    assert all(key in description for key in SECRET_KEYS), description
    sources = set()
    for key in ("hmac_secret", "admin_token", "redis_password"):
        found = re.fullmatch(DYNAMIC_REFERENCE, values[key])
        assert found is not None, f"{key} is no dynamic reference: {values[key]!r}"
        source, json_key = found.groups()
        assert json_key == ""
        generator = _generated(template, source)
        assert generator["PasswordLength"] >= 32
        assert generator["ExcludePunctuation"] is True
        sources.add(source)
    assert len(sources) == 3, "each value is generated on its own"
    # Every other secret of the stack is generated, not written into the template.
    for sid, secret in resources(template, "AWS::SecretsManager::Secret").items():
        if secret["Properties"].get("Name") != SERVING_SECRET:
            assert "SecretString" not in secret["Properties"], sid


def test_registry_dsn_is_composed_from_the_instance_and_its_generated_password(
    template: Any,
) -> None:
    db_id, db = one(template, "AWS::RDS::DBInstance")
    dsn = _serving_values(template)["registry_dsn"]
    found = re.fullmatch(
        rf"postgresql\+psycopg://servekit:{DYNAMIC_REFERENCE}"
        rf"@<GetAtt:{db_id}\.Endpoint\.Address>:<GetAtt:{db_id}\.Endpoint\.Port>"
        r"/servekit\?sslmode=require",
        dsn,
    )
    assert found is not None, dsn
    source, json_key = found.groups()
    assert json_key == "password"
    # The same generated password the instance was created with.
    password = text(db["Properties"]["MasterUserPassword"])
    master = re.fullmatch(DYNAMIC_REFERENCE, password)
    assert master is not None
    assert _generated(template, source) == _generated(template, master.group(1))
    generator = _generated(template, source)
    assert generator["GenerateStringKey"] == "password"
    # Nothing in the password needs escaping in a URL or a JSON string.
    assert set("\"\\@:/?#%&+'") <= set(generator["ExcludeCharacters"])
    assert not generator.get("IncludeSpace")
    assert db["Properties"]["MasterUsername"] == "servekit"
    assert db["Properties"]["DBName"] == "servekit"


def _redis_url(template: Any, key: str) -> tuple[str, int]:
    """The generated secret a Redis url of the serving secret takes its password from
    (its logical id), and the url's database; fails unless the url is TLS to the stack's
    Redis with the password only as a dynamic reference."""
    redis_id, _ = one(template, "AWS::ElastiCache::ReplicationGroup")
    url = _serving_values(template)[key]
    found = re.fullmatch(
        rf"rediss://:{DYNAMIC_REFERENCE}"
        rf"@<GetAtt:{redis_id}\.PrimaryEndPoint\.Address>:<GetAtt:{redis_id}\.PrimaryEndPoint\.Port>"
        r"/(\d+)",
        url,
    )
    assert found is not None, f"{key}: {url}"
    source, json_key, database = found.groups()
    assert json_key == "", f"{key}: the whole generated value is the password"
    return source, int(database)


@pytest.mark.parametrize("key", sorted(REDIS_DATABASES))
def test_redis_urls_are_composed_from_the_endpoint_and_the_generated_password(
    template: Any, key: str
) -> None:
    source, database = _redis_url(template, key)
    assert database == REDIS_DATABASES[key]
    # The password Redis's AUTH token is, and the secret's redis_password.
    _, redis = one(template, "AWS::ElastiCache::ReplicationGroup")
    token = re.fullmatch(DYNAMIC_REFERENCE, text(redis["Properties"]["AuthToken"]))
    password = re.fullmatch(DYNAMIC_REFERENCE, _serving_values(template)["redis_password"])
    assert token is not None
    assert password is not None
    assert source == token.group(1) == password.group(1)
    generator = _generated(template, source)
    assert generator["ExcludePunctuation"] is True  # stands in the userinfo unescaped


@pytest.mark.parametrize("key", sorted(REDIS_DATABASES))
def test_the_redis_urls_resolve_to_what_the_stores_connect_to(template: Any, key: str) -> None:
    # The url as CloudFormation resolves it, read the way the stores read it (redis-py).
    redis_id, _ = one(template, "AWS::ElastiCache::ReplicationGroup")
    password = "Ab3" * 21
    url = (
        re.sub(DYNAMIC_REFERENCE, password, _serving_values(template)[key])
        .replace(f"<GetAtt:{redis_id}.PrimaryEndPoint.Address>", "master.redis.example")
        .replace(f"<GetAtt:{redis_id}.PrimaryEndPoint.Port>", "6379")
    )
    options = parse_url(url)
    assert options["connection_class"] is SSLConnection
    assert options["password"] == password
    assert not options.get("username")
    assert (options["host"], options["port"]) == ("master.redis.example", 6379)
    assert options["db"] == REDIS_DATABASES[key]


def test_rate_limits_cache_and_features_use_separate_redis_databases(template: Any) -> None:
    settings = load_cluster_settings(kube.SETTINGS)
    rate_limits = parse_url(settings.stores.redis_url)["db"]
    output = text(template.to_json()["Outputs"]["RedisUrl"]["Value"])
    assert int(output.rsplit("/", 1)[1]) == rate_limits
    databases = [rate_limits] + [_redis_url(template, key)[1] for key in REDIS_DATABASES]
    assert len(set(databases)) == len(databases), databases


def _statements(template: Any) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """Every statement of every identity policy: (policy id, statement, its roles)."""
    found = []
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for pid, policy in resources(template, kind).items():
            props = policy["Properties"]
            for statement in as_list(props["PolicyDocument"]["Statement"]):
                found.append((pid, statement, props.get("Roles", [])))
    for rid, role in resources(template, "AWS::IAM::Role").items():
        for inline in role["Properties"].get("Policies", []):
            for statement in as_list(inline["PolicyDocument"]["Statement"]):
                found.append((rid, statement, [{"Ref": rid}]))
    return found


def test_only_the_ray_pods_role_may_read_the_serving_secret(template: Any) -> None:
    role_ids = [ray_pods_role(template)[0], ray_workers_role(template)[0]]
    secret_id, _ = _serving_secret(template)
    readers = []
    for pid, statement, roles in _statements(template):
        assert not {"NotAction", "NotResource"} & set(statement), pid
        if statement["Effect"] != "Allow":
            continue
        actions = [a.lower() for a in as_list(statement["Action"])]
        if not any(fnmatch.fnmatch("secretsmanager:getsecretvalue", a) for a in actions):
            continue
        targets = as_list(statement["Resource"])
        if "*" in targets or secret_id in json.dumps(targets):
            readers.append((pid, roles, targets))
    assert readers, "the pods' role is granted the secret"
    granted = []
    for pid, roles, targets in readers:
        assert roles in ([{"Ref": r}] for r in role_ids), f"{pid} grants the secret to {roles}"
        granted += roles
        assert targets == [{"Ref": secret_id}], f"{pid} grants more than the secret: {targets}"
    for rid, role in resources(template, "AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        for broad in ("AdministratorAccess", "PowerUserAccess", "SecretsManagerReadWrite"):
            assert broad not in managed, rid
    # The head's role and the workers' each.
    assert sorted(r["Ref"] for r in granted) == sorted(role_ids)


def test_the_secrets_resource_policy_refuses_every_other_principal(template: Any) -> None:
    role_ids = [ray_pods_role(template)[0], ray_workers_role(template)[0]]
    secret_id, _ = _serving_secret(template)
    (policy,) = (
        p
        for p in resources(template, "AWS::SecretsManager::ResourcePolicy").values()
        if p["Properties"]["SecretId"] == {"Ref": secret_id}
    )
    (statement,) = policy["Properties"]["ResourcePolicy"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == {"AWS": "*"}
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": [{"Fn::GetAtt": [r, "Arn"]} for r in role_ids]}
    }


def test_the_settings_name_the_secret_the_pods_may_read(template: Any) -> None:
    role_id, _ = ray_pods_role(template)
    (granted,) = (
        statement["Resource"]["Ref"]
        for _, statement, roles in _statements(template)
        if roles == [{"Ref": role_id}] and "secretsmanager:GetSecretValue" in statement["Action"]
    )
    secret = resources(template, "AWS::SecretsManager::Secret")[granted]
    settings = load_cluster_settings(kube.SETTINGS)
    assert secret["Properties"]["Name"] == settings.stores.aws_secret_id == SERVING_SECRET
    outputs = template.to_json()["Outputs"]
    assert {"ServingSecretName", "RedisUrl", "RegistryEndpoint"} <= set(outputs)
    redis_id, _ = one(template, "AWS::ElastiCache::ReplicationGroup")
    assert text(outputs["RedisUrl"]["Value"]) == (
        f"rediss://<GetAtt:{redis_id}.PrimaryEndPoint.Address>"
        f":<GetAtt:{redis_id}.PrimaryEndPoint.Port>/0"
    )
    assert settings.stores.redis_url.startswith("rediss://")


# --- who reaches the stores ----------------------------------------------------------


def _pods_security_group(template: Any) -> dict[str, Any]:
    """The EKS cluster security group: managed node groups without a launch template
    carry it, and with the VPC CNI so does every pod's traffic."""
    cluster_id, _ = one(template, "Custom::AWSCDK-EKS-Cluster")
    for group in resources(template, "AWS::EKS::Nodegroup").values():
        assert "LaunchTemplate" not in group["Properties"]
        assert "RemoteAccess" not in group["Properties"]
    return {"Fn::GetAtt": [cluster_id, "ClusterSecurityGroupId"]}


def _admits_only_the_pods(template: Any, group_ids: list[Any], port: int) -> None:
    (group_ref,) = group_ids
    group_id = group_ref["Fn::GetAtt"][0]
    group = resources(template, "AWS::EC2::SecurityGroup")[group_id]["Properties"]
    assert not group.get("SecurityGroupIngress")
    # No way out but the placeholder rule the CDK writes for "none".
    assert [e["CidrIp"] for e in group["SecurityGroupEgress"]] == ["255.255.255.255/32"]
    rules = [
        r["Properties"]
        for r in resources(template, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == group_ref
    ]
    assert len(rules) == 1, rules
    (rule,) = rules
    assert rule["IpProtocol"] == "tcp"
    assert rule["FromPort"] == rule["ToPort"] == port
    assert rule["SourceSecurityGroupId"] == _pods_security_group(template)
    assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule)


def _private_subnets(template: Any) -> list[Any]:
    """The subnets the node groups run in."""
    subnets = [
        g["Properties"]["Subnets"] for g in resources(template, "AWS::EKS::Nodegroup").values()
    ]
    assert all(s == subnets[0] for s in subnets)
    return list(subnets[0])


def test_the_network_policy_tests_probe_the_private_subnets(template: Any) -> None:
    cidrs = [
        resources(template, "AWS::EC2::Subnet")[subnet["Ref"]]["Properties"]["CidrBlock"]
        for subnet in _private_subnets(template)
    ]
    address = ipaddress.ip_address(PRIVATE_SUBNET_ADDRESS)
    assert any(address in ipaddress.ip_network(cidr) for cidr in cidrs), cidrs


def test_redis_admits_only_the_ray_pods_and_encrypts(template: Any) -> None:
    _, redis = one(template, "AWS::ElastiCache::ReplicationGroup")
    props = redis["Properties"]
    _admits_only_the_pods(template, props["SecurityGroupIds"], 6379)
    assert props["Engine"] == "redis"
    assert props["EngineVersion"].startswith("7.")
    assert props["Port"] == 6379
    assert props["AtRestEncryptionEnabled"] is True
    assert props["TransitEncryptionEnabled"] is True
    assert props.get("TransitEncryptionMode", "required") == "required"
    assert props["AutomaticFailoverEnabled"] is True
    assert props["MultiAZEnabled"] is True
    # AUTH with the serving secret's redis_password, both the same generated value.
    token = re.fullmatch(DYNAMIC_REFERENCE, text(props["AuthToken"]))
    password = re.fullmatch(DYNAMIC_REFERENCE, _serving_values(template)["redis_password"])
    assert token is not None
    assert password is not None
    assert token.groups() == password.groups()
    subnets = resources(template, "AWS::ElastiCache::SubnetGroup")
    subnet_group = subnets[props["CacheSubnetGroupName"]["Ref"]]["Properties"]
    assert subnet_group["SubnetIds"] == _private_subnets(template)


def test_registry_admits_only_the_ray_pods_and_encrypts(template: Any) -> None:
    _, db = one(template, "AWS::RDS::DBInstance")
    props = db["Properties"]
    _admits_only_the_pods(template, props["VPCSecurityGroups"], 5432)
    assert props["Engine"] == "postgres"
    assert props["EngineVersion"].split(".")[0] == "15"
    assert props["Port"] == "5432"
    assert props["StorageEncrypted"] is True
    assert props["PubliclyAccessible"] is False
    assert props["DeletionProtection"] is True
    assert db["DeletionPolicy"] == "Snapshot"
    subnets = resources(template, "AWS::RDS::DBSubnetGroup")
    assert subnets[props["DBSubnetGroupName"]["Ref"]]["Properties"]["SubnetIds"] == (
        _private_subnets(template)
    )
    parameters = resources(template, "AWS::RDS::DBParameterGroup")
    group = parameters[props["DBParameterGroupName"]["Ref"]]["Properties"]
    assert group["Parameters"]["rds.force_ssl"] == "1"


def test_registry_deletion_protection_is_a_setting(stack_module: Any) -> None:
    context = {stack_module.REGISTRY_DELETION_PROTECTION_CONTEXT: "false"}
    _, db = one(synth(stack_module, context), "AWS::RDS::DBInstance")
    assert db["Properties"]["DeletionProtection"] is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, True),
        (True, True),
        ("true", True),
        (" TRUE ", True),
        (False, False),
        ("false", False),
    ],
)
def test_registry_deletion_protection_values(
    stack_module: Any, value: object, expected: bool
) -> None:
    assert stack_module.registry_deletion_protection(value) is expected


@pytest.mark.parametrize("value", ["no", "0", "", 1, ["false"]])
def test_registry_deletion_protection_refuses_anything_else(
    stack_module: Any, value: object
) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        stack_module.registry_deletion_protection(value)
