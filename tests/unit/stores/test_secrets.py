"""Secrets from the environment, files, a mounted directory and AWS Secrets Manager (moto's
standalone server on 127.0.0.1, reached through boto3's standard configuration only)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stores.secrets import (
    SECRET_NAMES,
    MissingSecret,
    Secrets,
    SecretsError,
    load_secrets,
)
from tests.conftest import moto_server

# Values no message may contain.
VALUES = {"env": "from-env-9f1c", "file": "from-file-51ab", "dir": "from-dir-77de"}
AWS_VALUE = "from-aws-3c0e"


@pytest.fixture(scope="module")
def secretsmanager_endpoint() -> Iterator[str]:
    with moto_server("Secrets Manager") as url:
        yield url


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, secretsmanager_endpoint: str) -> Any:
    """A Secrets Manager client on the test server; the same standard variables configure
    the code under test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", secretsmanager_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-only")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    import boto3

    return boto3.session.Session().client("secretsmanager")


def new_aws_secret(client: Any, value: str) -> str:
    """A secret with a fresh id (the process caches secrets by id)."""
    secret_id = f"servekit/test/{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=secret_id, SecretString=value)
    return secret_id


def every_source(tmp_path: Path, name: str, secret_id: str | None = None) -> dict[str, str]:
    """An environment in which `name` is set in every source, each to its own value."""
    (tmp_path / "one").write_text(VALUES["file"] + "\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / name).write_text(VALUES["dir"])
    env = {
        f"SERVEKIT_{name.upper()}": VALUES["env"],
        f"SERVEKIT_{name.upper()}_FILE": str(tmp_path / "one"),
        "SERVEKIT_SECRETS_DIR": str(tmp_path / "dir"),
    }
    if secret_id:
        env["SERVEKIT_AWS_SECRET_ID"] = secret_id
    return env


def assert_no_value(text: str) -> None:
    for value in [*VALUES.values(), AWS_VALUE]:
        assert value not in text


def test_the_names() -> None:
    assert SECRET_NAMES == (
        "hmac_secret",
        "admin_token",
        "registry_dsn",
        "redis_password",
        "cache_redis_url",
        "features_redis_url",
    )


def test_from_the_environment() -> None:
    secrets = load_secrets({"SERVEKIT_ADMIN_TOKEN": "tok"})
    assert (secrets.get("admin_token"), secrets.source("admin_token")) == ("tok", "env")
    assert secrets.get("hmac_secret") is None


def test_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_REDIS_PASSWORD", "pw")
    assert load_secrets().require("redis_password") == "pw"


@pytest.mark.parametrize(
    ("content", "expected"),
    [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("a\r\n", "a"), ("a\n\n", "a\n")],
)
def test_from_a_file_less_one_newline(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "hmac"
    path.write_bytes(content.encode())
    secrets = load_secrets({"SERVEKIT_HMAC_SECRET_FILE": str(path)})
    assert (secrets.require("hmac_secret"), secrets.source("hmac_secret")) == (expected, "file")


def test_from_a_mounted_directory(tmp_path: Path) -> None:
    (tmp_path / "registry_dsn").write_text("postgresql://u:p@db/servekit\n")
    secrets = load_secrets({"SERVEKIT_SECRETS_DIR": str(tmp_path)})
    assert secrets.require("registry_dsn") == "postgresql://u:p@db/servekit"
    assert secrets.source("registry_dsn") == "dir"
    assert secrets.get("admin_token") is None  # no such file: not an error


def test_from_aws_secrets_manager(aws: Any) -> None:
    secret_id = new_aws_secret(aws, json.dumps({"hmac_secret": AWS_VALUE, "other": 3}))
    secrets = load_secrets({"SERVEKIT_AWS_SECRET_ID": secret_id})
    assert (secrets.require("hmac_secret"), secrets.source("hmac_secret")) == (AWS_VALUE, "aws")
    assert secrets.get("admin_token") is None


def test_aws_is_fetched_once_per_process(aws: Any) -> None:
    secret_id = new_aws_secret(aws, json.dumps({"admin_token": "first"}))
    assert load_secrets({"SERVEKIT_AWS_SECRET_ID": secret_id}).get("admin_token") == "first"
    aws.put_secret_value(SecretId=secret_id, SecretString=json.dumps({"admin_token": "second"}))
    assert load_secrets({"SERVEKIT_AWS_SECRET_ID": secret_id}).get("admin_token") == "first"


def test_the_order_env_file_dir_aws(tmp_path: Path, aws: Any) -> None:
    secret_id = new_aws_secret(aws, json.dumps({"admin_token": AWS_VALUE}))
    env = every_source(tmp_path, "admin_token", secret_id)
    for source, variable in [
        ("env", "SERVEKIT_ADMIN_TOKEN"),
        ("file", "SERVEKIT_ADMIN_TOKEN_FILE"),
        ("dir", "SERVEKIT_SECRETS_DIR"),
    ]:
        secrets = load_secrets(env)
        assert (secrets.get("admin_token"), secrets.source("admin_token")) == (
            VALUES[source],
            source,
        )
        del env[variable]
    secrets = load_secrets(env)
    assert (secrets.get("admin_token"), secrets.source("admin_token")) == (AWS_VALUE, "aws")


def test_an_empty_value_counts_as_absent(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "admin_token").write_text(VALUES["dir"])
    env = {
        "SERVEKIT_ADMIN_TOKEN": "",
        "SERVEKIT_ADMIN_TOKEN_FILE": str(tmp_path / "empty"),
        "SERVEKIT_SECRETS_DIR": str(tmp_path),
    }
    assert load_secrets(env).source("admin_token") == "dir"


def test_a_missing_secret_says_where_it_looked(tmp_path: Path, aws: Any) -> None:
    secret_id = new_aws_secret(aws, json.dumps({"admin_token": AWS_VALUE}))
    env = every_source(tmp_path, "admin_token", secret_id)
    env.pop("SERVEKIT_ADMIN_TOKEN_FILE")
    secrets = Secrets(env, names=(*SECRET_NAMES, "extra"))
    with pytest.raises(MissingSecret) as caught:
        secrets.require("extra")
    message = str(caught.value)
    assert message.startswith("secret extra not found; looked in ")
    for place in (
        "SERVEKIT_EXTRA",
        "SERVEKIT_EXTRA_FILE (unset)",
        f"file extra in {tmp_path / 'dir'}",
        f"key extra of AWS secret {secret_id}",
    ):
        assert place in message
    assert_no_value(message + repr(caught.value))
    assert secrets.get("extra") is None
    with pytest.raises(MissingSecret):
        secrets.source("extra")


def test_nothing_shows_a_value(tmp_path: Path) -> None:
    secrets = load_secrets(every_source(tmp_path, "hmac_secret"))
    assert secrets.require("hmac_secret") == VALUES["env"]
    assert secrets.get("admin_token") is None
    for text in (repr(secrets), str(secrets), f"{secrets}"):
        assert_no_value(text)
        assert "hmac_secret=env" in text
        assert "admin_token=missing" in text


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    env = {"SERVEKIT_ADMIN_TOKEN_FILE": str(tmp_path / "nope")}
    with pytest.raises(SecretsError, match="SERVEKIT_ADMIN_TOKEN_FILE"):
        load_secrets(env).get("admin_token")


def test_a_secrets_dir_that_is_not_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="not a directory"):
        load_secrets({"SERVEKIT_SECRETS_DIR": str(tmp_path / "nope")}).get("admin_token")


def test_a_file_that_is_not_text_keeps_its_bytes_out_of_the_error(tmp_path: Path) -> None:
    (tmp_path / "hmac_secret").write_bytes(b"\xff" + VALUES["dir"].encode())
    with pytest.raises(SecretsError, match="not UTF-8") as caught:
        load_secrets({"SERVEKIT_SECRETS_DIR": str(tmp_path)}).get("hmac_secret")
    assert (caught.value.__cause__, caught.value.__context__) == (None, None)


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(SecretsError, match="unknown secret 'hmac'"):
        load_secrets({}).get("hmac")


def test_aws_errors_are_clear_and_hold_no_value(aws: Any) -> None:
    missing = f"servekit/test/{uuid.uuid4().hex[:8]}"
    with pytest.raises(SecretsError, match=f"{missing}.*ResourceNotFoundException"):
        load_secrets({"SERVEKIT_AWS_SECRET_ID": missing}).get("admin_token")

    for text, complaint in [
        ("not json " + AWS_VALUE, "not a JSON object"),
        (json.dumps([AWS_VALUE]), "not a JSON object"),
        (json.dumps({"admin_token": [AWS_VALUE]}), "admin_token .* not a string"),
    ]:
        secret_id = new_aws_secret(aws, text)
        with pytest.raises(SecretsError, match=complaint) as caught:
            load_secrets({"SERVEKIT_AWS_SECRET_ID": secret_id}).get("admin_token")
        assert_no_value(str(caught.value) + repr(caught.value))
        assert (caught.value.__cause__, caught.value.__context__) == (None, None)

    binary = f"servekit/test/{uuid.uuid4().hex[:8]}"
    aws.create_secret(Name=binary, SecretBinary=AWS_VALUE.encode())
    with pytest.raises(SecretsError, match="no SecretString"):
        load_secrets({"SERVEKIT_AWS_SECRET_ID": binary}).get("admin_token")
