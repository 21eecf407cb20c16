"""The stores behind multi-tenant auth and the secret the serving processes read.

- The tenant registry: RDS PostgreSQL 15, storage encrypted, TLS forced, in the private
  subnets, not publicly accessible, its master password generated into its own secret.
- Redis: an ElastiCache Redis 7 replication group (primary and replica in two zones),
  encrypted at rest and in transit, AUTH token required. It holds the shared rate limits,
  the embedding cache's shared tier and the online features, each in its own database.
- The serving secret (`SERVING_SECRET_NAME`): one JSON object with the keys the serving
  processes read (`SECRET_KEYS`). Only the Ray pods' roles (the head's and the
  workers') may read it: they alone are granted GetSecretValue on it, and the secret's
  resource policy denies everyone else.

Both stores admit only the security group the Ray pods' traffic carries, on their port.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy, SecretValue
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

# The serving processes get it as SERVEKIT_AWS_SECRET_ID (`stores.aws_secret_id` in
# cluster/settings.yaml; a test checks they agree). A fixed name, so the settings need
# no stack output for it.
SERVING_SECRET_NAME = "servekit/serving"
SECRET_KEYS = (
    "hmac_secret",
    "admin_token",
    "redis_password",
    "registry_dsn",
    "cache_redis_url",
    "features_redis_url",
)
REDIS_PORT = 6379
# Redis databases, one per use, so that none of them reads or deletes another's keys
# (the cache deletes a retired version's keys by SCAN in the database its url names).
# The rate limits' url (the RedisUrl output, SERVEKIT_REDIS_URL) carries no password:
# they read redis_password. The others are secrets, the password in their url.
RATE_LIMITS_DB = 0
CACHE_DB = 1
FEATURES_DB = 2
REDIS_ENGINE_VERSION = "7.1"
REGISTRY_PORT = 5432
REGISTRY_DATABASE = "servekit"
REGISTRY_USER = "servekit"
# The registry takes a SQLAlchemy URL; psycopg (3) is the driver the image has.
REGISTRY_SCHEME = "postgresql+psycopg"
# Generated passwords leave out every punctuation character, so that they stand in a
# URL's userinfo and in a JSON string as they are, and meet ElastiCache's AUTH rules.
GENERATED_LENGTH = 64


class ServingStores(Construct):
    """The registry, Redis and the serving secret, readable only by `readers`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnet_type: ec2.SubnetType,
        clients: ec2.ISecurityGroup,
        readers: Sequence[iam.IRole],
        deletion_protection: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        hmac_secret = self._generated("HmacSecret", "hmac_secret")
        admin_token = self._generated("AdminToken", "admin_token")
        redis_password = self._generated("RedisPassword", "redis_password")

        self.redis_security_group = self._security_group(vpc, "Redis", clients, REDIS_PORT)
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "RedisSubnets",
            description="servekit Redis: the cluster's private subnets",
            subnet_ids=vpc.select_subnets(subnet_type=subnet_type).subnet_ids,
        )
        self.redis = elasticache.CfnReplicationGroup(
            self,
            "Redis",
            replication_group_description="servekit rate limits, embedding cache, features",
            engine="redis",
            engine_version=REDIS_ENGINE_VERSION,
            cache_node_type="cache.t4g.medium",
            num_cache_clusters=2,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            port=REDIS_PORT,
            cache_subnet_group_name=subnet_group.ref,
            security_group_ids=[self.redis_security_group.security_group_id],
            at_rest_encryption_enabled=True,
            # At creation this means TLS only (transit encryption mode "required").
            transit_encryption_enabled=True,
            # Resolved by CloudFormation at deploy time: the template holds a reference.
            auth_token=redis_password.secret_value.unsafe_unwrap(),
            auto_minor_version_upgrade=True,
        )

        self.registry_security_group = self._security_group(vpc, "Registry", clients, REGISTRY_PORT)
        # A minor version that new instances may still start on (a bare "15" may not);
        # RDS applies later minor versions itself.
        engine = rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_15_17)
        self.registry = rds.DatabaseInstance(
            self,
            "Registry",
            engine=engine,
            instance_type=ec2.InstanceType("t4g.medium"),
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=subnet_type),
            security_groups=[self.registry_security_group],
            port=REGISTRY_PORT,
            database_name=REGISTRY_DATABASE,
            credentials=rds.Credentials.from_generated_secret(
                REGISTRY_USER, exclude_characters=string.punctuation
            ),
            # PostgreSQL 15 on RDS accepts plain connections unless told otherwise.
            parameter_group=rds.ParameterGroup(
                self, "RegistryParameters", engine=engine, parameters={"rds.force_ssl": "1"}
            ),
            storage_encrypted=True,
            publicly_accessible=False,
            multi_az=True,
            allocated_storage=20,
            max_allocated_storage=100,
            storage_type=rds.StorageType.GP3,
            backup_retention=Duration.days(7),
            deletion_protection=deletion_protection,
            removal_policy=RemovalPolicy.SNAPSHOT,
        )
        master = self.registry.secret
        assert master is not None, "credentials are generated into a secret"

        # The registry DSN is composed here, password included, and handed over inside
        # the serving secret, not as a password-less SERVEKIT_REGISTRY_DSN: the serving
        # processes read `registry_dsn` whole (the environment before the secret) and
        # have no separate password key, so such a variable would shadow the working
        # DSN. One secret, one grant per reader are also simpler to hold shut.
        # The password is in the template only as a dynamic reference to the master
        # secret, which CloudFormation resolves at deploy time; nothing else reads that
        # secret. The master password is not rotated: a rotation would have to rewrite
        # this key too (a redeploy does).
        dsn = (
            f"{REGISTRY_SCHEME}://{REGISTRY_USER}:"
            f"{master.secret_value_from_json('password').unsafe_unwrap()}"
            f"@{self.registry.db_instance_endpoint_address}:{self.registry.db_instance_endpoint_port}"
            f"/{REGISTRY_DATABASE}?sslmode=require"
        )
        # The Redis urls likewise: the password as a dynamic reference to its generated
        # secret, the same one Redis's AUTH token is resolved from.
        password = redis_password.secret_value
        values = {
            "hmac_secret": hmac_secret.secret_value,
            "admin_token": admin_token.secret_value,
            "redis_password": password,
            # Only dynamic references and the endpoint: nothing secret in plain text.
            "registry_dsn": SecretValue.unsafe_plain_text(dsn),
            "cache_redis_url": SecretValue.unsafe_plain_text(self._redis_url(CACHE_DB, password)),
            "features_redis_url": SecretValue.unsafe_plain_text(
                self._redis_url(FEATURES_DB, password)
            ),
        }
        assert tuple(values) == SECRET_KEYS
        self.secret = secretsmanager.Secret(
            self,
            "Serving",
            secret_name=SERVING_SECRET_NAME,
            description="servekit serving processes: " + ", ".join(SECRET_KEYS),
            secret_object_value=values,
            # API keys are stored as HMACs under hmac_secret: losing it revokes them all.
            removal_policy=RemovalPolicy.RETAIN,
        )
        for reader in readers:
            self.secret.grant_read(reader)
        self.secret.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlyTheRayPodsRead",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["secretsmanager:GetSecretValue"],
                resources=["*"],
                # A negated condition with several values: none of them matches.
                conditions={
                    "ArnNotEquals": {"aws:PrincipalArn": [reader.role_arn for reader in readers]}
                },
            )
        )

    @property
    def redis_url(self) -> str:
        """The rate limits' `rediss://host:port/0`: TLS, and no password (that is in
        the secret)."""
        return self._redis_url(RATE_LIMITS_DB)

    def _redis_url(self, database: int, password: SecretValue | None = None) -> str:
        """`rediss://[:<password>@]host:port/<database>` on the primary endpoint."""
        # The generated password has no punctuation: it stands in the userinfo as it is.
        userinfo = "" if password is None else f":{password.unsafe_unwrap()}@"
        address = self.redis.attr_primary_end_point_address
        port = self.redis.attr_primary_end_point_port
        return f"rediss://{userinfo}{address}:{port}/{database}"

    def _generated(self, construct_id: str, key: str) -> secretsmanager.Secret:
        # A secret per generated value: Secrets Manager generates one value per secret.
        # Only CloudFormation reads them, to compose the serving secret and Redis's AUTH.
        return secretsmanager.Secret(
            self,
            construct_id,
            description=f"servekit: the generated {key} of {SERVING_SECRET_NAME}",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=GENERATED_LENGTH, exclude_punctuation=True
            ),
        )

    def _security_group(
        self, vpc: ec2.IVpc, name: str, clients: ec2.ISecurityGroup, port: int
    ) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(
            self,
            f"{name}SecurityGroup",
            vpc=vpc,
            description=f"servekit {name}: {port} from the Ray pods only",
            allow_all_outbound=False,
        )
        group.add_ingress_rule(clients, ec2.Port.tcp(port), "the Ray pods")
        return group
