"""Named secrets (the HMAC key for API keys, the admin token, store passwords, the
embedding cache's Redis url, which may carry its password), resolved from where
deployments put them, first match wins:
1. the environment variable `SERVEKIT_<NAME>`;
2. the file named by `SERVEKIT_<NAME>_FILE` (one mounted Kubernetes secret key);
3. the file `<name>` in the directory `SERVEKIT_SECRETS_DIR` (a whole mounted secret);
4. the key `<name>` of the JSON object in the AWS Secrets Manager secret named by
   `SERVEKIT_AWS_SECRET_ID` (fetched once per process; region, credentials and endpoint
   come from the standard AWS configuration, `AWS_ENDPOINT_URL_SECRETS_MANAGER` included).
An empty value counts as absent. No message, `repr` or `str` here ever holds a value.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

# Every secret servekit reads; add a name here to make it resolvable.
SECRET_NAMES: tuple[str, ...] = (
    "hmac_secret",
    "admin_token",
    "registry_dsn",
    "redis_password",
    "cache_redis_url",
    "features_redis_url",
)
ENV_PREFIX = "SERVEKIT_"
DIR_VAR = "SERVEKIT_SECRETS_DIR"
AWS_VAR = "SERVEKIT_AWS_SECRET_ID"
SOURCES = ("env", "file", "dir", "aws")


class SecretsError(Exception):
    """A secret's source is configured but unusable (never carries a value)."""


class MissingSecret(SecretsError):
    """A required secret was found nowhere; the message lists where it was looked for."""


def env_name(name: str) -> str:
    """The environment variable holding `name` itself (`SERVEKIT_HMAC_SECRET`)."""
    return ENV_PREFIX + name.upper()


class Secrets:
    """The secrets of one process, resolved on first use and remembered."""

    def __init__(self, env: Mapping[str, str], names: tuple[str, ...] = SECRET_NAMES) -> None:
        # Only servekit's own variables are kept (the rest of the environment is not ours).
        self._env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        self._names = names
        self._found: dict[str, tuple[str, str] | None] = {}  # name -> (source, value)

    def get(self, name: str) -> str | None:
        """The secret's value, or None when no source has it."""
        found = self._resolve(name)
        return None if found is None else found[1]

    def require(self, name: str) -> str:
        """The secret's value; `MissingSecret` (saying where it looked) when absent."""
        found = self._resolve(name)
        if found is None:
            raise MissingSecret(f"secret {name} not found; looked in {self._places(name)}")
        return found[1]

    def source(self, name: str) -> str:
        """Where the secret came from: one of `SOURCES`; `MissingSecret` when absent."""
        self.require(name)
        found = self._found[name]
        assert found is not None
        return found[0]

    def __repr__(self) -> str:
        # Sources of the secrets resolved so far; never a value, and no lookup.
        known = ", ".join(
            f"{name}={found[0] if found else 'missing'}" for name, found in self._found.items()
        )
        return f"Secrets({known})"

    __str__ = __repr__

    def _resolve(self, name: str) -> tuple[str, str] | None:
        if name not in self._names:
            raise SecretsError(f"unknown secret {name!r}; known: {', '.join(self._names)}")
        if name not in self._found:
            self._found[name] = self._lookup(name)
        return self._found[name]

    def _lookup(self, name: str) -> tuple[str, str] | None:
        """The first source that has the secret, in the documented order."""
        if value := self._env.get(env_name(name)):
            return "env", value
        file_var = env_name(name) + "_FILE"
        if (path := self._env.get(file_var)) and (value := _read(Path(path), file_var)):
            return "file", value
        if directory := self._env.get(DIR_VAR):
            if not Path(directory).is_dir():
                raise SecretsError(f"{DIR_VAR} names {directory}, which is not a directory")
            candidate = Path(directory) / name
            if candidate.exists() and (value := _read(candidate, DIR_VAR)):
                return "dir", value
        if secret_id := self._env.get(AWS_VAR):
            value = aws_secret(secret_id).get(name)
            if value is not None and not isinstance(value, str):
                raise SecretsError(f"key {name} of AWS secret {secret_id} is not a string")
            if value:
                return "aws", value
        return None

    def _places(self, name: str) -> str:
        """Where `name` was looked for, in order, as configured now."""
        file_var = env_name(name) + "_FILE"
        directory, secret_id = self._env.get(DIR_VAR), self._env.get(AWS_VAR)
        places = [
            f"environment variable {env_name(name)}",
            f"file {self._env[file_var]} ({file_var})"
            if self._env.get(file_var)
            else f"a file named by {file_var} (unset)",
            f"file {name} in {directory} ({DIR_VAR})"
            if directory
            else f"a directory named by {DIR_VAR} (unset)",
            f"key {name} of AWS secret {secret_id} ({AWS_VAR})"
            if secret_id
            else f"an AWS secret named by {AWS_VAR} (unset)",
        ]
        return "; ".join(places)


def load_secrets(env: Mapping[str, str] = os.environ) -> Secrets:
    """The secrets as configured by `env` (by default the process environment)."""
    return Secrets(env)


def _read(path: Path, variable: str) -> str:
    """A secret file's content less one trailing newline (as `echo` or an editor adds)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SecretsError(f"{path} ({variable}) cannot be read: {type(e).__name__}") from e
    text = _utf8_or_none(data)
    if text is None:
        raise SecretsError(f"{path} ({variable}) is not UTF-8 text")
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _utf8_or_none(data: bytes) -> str | None:
    # Decoding and JSON errors keep the whole input (the secret) on the exception, so
    # they are turned into None here instead of being chained to a SecretsError.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


_aws_cache: dict[str, dict[str, Any]] = {}
_aws_lock = threading.Lock()


def aws_secret(secret_id: str) -> dict[str, Any]:
    """The name -> value object stored in AWS Secrets Manager as `secret_id`, fetched
    once per process (a failed fetch is tried again on the next call)."""
    with _aws_lock:
        if secret_id not in _aws_cache:
            _aws_cache[secret_id] = _fetch(secret_id)
        return _aws_cache[secret_id]


def _fetch(secret_id: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = _client().get_secret_value(SecretId=secret_id)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "error")
        raise SecretsError(f"AWS secret {secret_id} cannot be read: {code}") from e
    except BotoCoreError as e:
        raise SecretsError(f"AWS secret {secret_id} cannot be read: {e}") from e
    text = reply.get("SecretString")
    if text is None:
        raise SecretsError(f"AWS secret {secret_id} has no SecretString (binary secrets unused)")
    return _parse(secret_id, text)


def _parse(secret_id: str, text: str) -> dict[str, Any]:
    """The JSON object in a SecretString."""
    data = _json_or_none(text)
    if not isinstance(data, dict):
        raise SecretsError(f"AWS secret {secret_id}: SecretString is not a JSON object")
    return data


def _json_or_none(text: str) -> Any:
    # See _utf8_or_none: the decoder's exception would carry the document.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _client() -> SecretsManagerClient:
    """A Secrets Manager client from the standard AWS configuration, with short timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3})
    return boto3.session.Session().client("secretsmanager", config=config)
