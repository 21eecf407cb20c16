"""`servekit tenants ...`: tenants and API keys through the admin API, as the operator
(the bootstrap admin credential from the configured secrets, or the one a local
`servekit serve` generated)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

from servekit.credentials import operator_token
from stores.secrets import SecretsError
from stores.tenants import LIMIT_FIELDS, SCOPES

SCOPE_HELP = f"comma-separated: {','.join(SCOPES)}"


class UsageError(Exception):
    """A command the user gave wrongly, or a setup it cannot run in: one line, exit 1."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], url: str) -> None:
    """`tenants create|list|update|usage` and `tenants keys create|list|revoke|rotate`."""
    tenants = sub.add_parser("tenants", help="tenants and API keys (admin API, as operator)")
    tenants.add_argument("--url", default=url, help="servekit's HTTP address")
    verbs = tenants.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a tenant")
    _url_arg(create)
    create.add_argument("name")
    create.add_argument("--id", help="tenant id (default: generated)")
    _limit_args(create)
    _url_arg(verbs.add_parser("list", help="list tenants"))
    update = verbs.add_parser(
        "update", help="disable or enable a tenant, change or remove its limits"
    )
    _url_arg(update)
    update.add_argument("tenant")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse its keys")
    state.add_argument("--enable", action="store_true", help="accept its keys again")
    _limit_args(update)
    update.add_argument(
        "--unlimited",
        help=f"comma-separated limits to remove: {','.join(LIMIT_FIELDS)}",
    )
    usage = verbs.add_parser("usage", help="a tenant's usage this month")
    _url_arg(usage)
    usage.add_argument("tenant")
    usage.add_argument("--start", help="first day, YYYY-MM-DD")
    usage.add_argument("--end", help="last day, YYYY-MM-DD")
    keys = verbs.add_parser("keys", help="a tenant's API keys").add_subparsers(
        dest="key_verb", required=True
    )
    make = keys.add_parser("create", help="create a key (printed once)")
    _url_arg(make)
    make.add_argument("tenant")
    make.add_argument("--name", default="default")
    make.add_argument("--scopes", help=f"{SCOPE_HELP} (default: all but admin)")
    make.add_argument("--models", help="comma-separated models it may call (default: all)")
    make.add_argument("--may-pin", action="store_true", help="may choose a version")
    make.add_argument("--expires-in-s", type=int, help="seconds until it expires")
    _limit_args(make)
    listing = keys.add_parser("list", help="list a tenant's keys (never the keys)")
    _url_arg(listing)
    listing.add_argument("tenant")
    for verb, text in (("revoke", "revoke a key now"), ("rotate", "new key; old one expires")):
        cmd = keys.add_parser(verb, help=text)
        _url_arg(cmd)
        cmd.add_argument("tenant")
        cmd.add_argument("key_id")
        if verb == "rotate":
            cmd.add_argument("--overlap-s", type=float, help="old key stays valid this long")


def _url_arg(parser: argparse.ArgumentParser) -> None:
    """`--url` after the verb as well as before it (`servekit tenants list --url ...`);
    left out there, the one before it (or the default) holds."""
    parser.add_argument("--url", default=argparse.SUPPRESS, help="servekit's HTTP address")


def _limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests-per-s", type=float)
    parser.add_argument("--texts-per-s", type=float)
    parser.add_argument("--monthly-texts", type=int)


def _limits(args: argparse.Namespace) -> dict[str, Any] | None:
    values = {
        "requests_per_s": args.requests_per_s,
        "texts_per_s": args.texts_per_s,
        "monthly_texts": args.monthly_texts,
    }
    return {k: v for k, v in values.items() if v is not None} or None


def _csv(text: str | None, option: str) -> list[str] | None:
    """The parts of a comma-separated option; None when it was not given. Given but
    empty (`--models "$UNSET"`) is an error, not the default: for `--models` the
    default is every model."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise UsageError(f"{option}: empty; leave it out for the default")
    return parts


def _update_body(args: argparse.Namespace) -> dict[str, Any]:
    """The PATCH of `tenants update`: only what the options name changes (the other
    limits stay); nothing named is an error, not a no-op that looks like success."""
    limits: dict[str, Any] = _limits(args) or {}
    for name in _csv(args.unlimited, "--unlimited") or []:
        if name not in LIMIT_FIELDS:
            raise UsageError(f"--unlimited: {name!r} is no limit; one of {', '.join(LIMIT_FIELDS)}")
        if name in limits:
            raise UsageError(f"--unlimited: {name} is also given a value")
        limits[name] = None
    body: dict[str, Any] = {"limits": limits} if limits else {}
    if args.disable or args.enable:
        body["disabled"] = bool(args.disable)
    if not body:
        raise UsageError("nothing to change: give --disable, --enable, a limit or --unlimited")
    return body


def _operator_headers() -> dict[str, str]:
    """The operator credential's `Authorization`, or a UsageError saying where it is
    looked for (sent without one, every call would be a bare 401)."""
    try:
        token = operator_token()
    except (SecretsError, OSError) as e:  # OSError: the generated one, unreadable
        raise UsageError(f"the operator credential cannot be read: {e}") from e
    if not token:
        raise UsageError(
            "no operator credential: set SERVEKIT_ADMIN_TOKEN (or SERVEKIT_ADMIN_TOKEN_FILE, "
            "SERVEKIT_SECRETS_DIR), or run where `servekit serve` generated one"
        )
    return {"Authorization": f"Bearer {token}"}


def _call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {**_operator_headers(), "Content-Type": "application/json"}
    request = Request(f"{url}{path}", data=data, method=method, headers=headers)
    with urlopen(request, timeout=10) as response:
        raw = response.read()
    try:
        return json.loads(raw)
    except ValueError as e:
        raise UsageError(
            f"{url} answered {path} with something other than JSON: is it servekit?"
        ) from e


def run(args: argparse.Namespace) -> int:
    """Run one `servekit tenants` command; print its JSON answer."""
    url = args.url.rstrip("/")
    try:
        result = _dispatch(url, args)
    except UsageError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    except HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        if e.code == 401:
            # "a valid API key is required" to someone who gave none: the credential
            # this command sent (the operator's) is not the one the service runs with.
            message = (
                f"the service at {url} refused the operator credential: set "
                "SERVEKIT_ADMIN_TOKEN (or SERVEKIT_ADMIN_TOKEN_FILE) to its admin_token"
            )
        print(f"servekit: {e.code} {message}", file=sys.stderr)
        return 1
    except (URLError, OSError) as e:
        print(f"servekit: cannot reach the service at {url} ({e})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if isinstance(result, dict) and "key" in result:
        print("The key is shown only this once: store it now.", file=sys.stderr)
    return 0


def _dispatch(url: str, args: argparse.Namespace) -> Any:
    if args.verb == "create":
        body: dict[str, Any] = {"name": args.name, "id": args.id, "limits": _limits(args)}
        return _call(url, "POST", "/admin/v1/tenants", body)
    if args.verb == "list":
        return _call(url, "GET", "/admin/v1/tenants")
    tenant = quote(args.tenant, safe="")
    if args.verb == "update":
        return _call(url, "PATCH", f"/admin/v1/tenants/{tenant}", _update_body(args))
    if args.verb == "usage":
        query = urlencode({k: v for k, v in (("start", args.start), ("end", args.end)) if v})
        return _call(
            url, "GET", f"/admin/v1/tenants/{tenant}/usage" + (f"?{query}" if query else "")
        )
    keys = f"/admin/v1/tenants/{tenant}/keys"
    if args.key_verb == "list":
        return _call(url, "GET", keys)
    if args.key_verb == "create":
        body = {
            "name": args.name,
            "models": _csv(args.models, "--models"),
            "may_pin": args.may_pin,
            "expires_in_s": args.expires_in_s,
            "limits": _limits(args),
        }
        scopes = _csv(args.scopes, "--scopes")
        if scopes is not None:
            body["scopes"] = scopes
        return _call(url, "POST", keys, body)
    key = quote(args.key_id, safe="")
    if args.key_verb == "revoke":
        return _call(url, "DELETE", f"{keys}/{key}")
    overlap = {"overlap_s": args.overlap_s} if args.overlap_s is not None else {}
    return _call(url, "POST", f"{keys}/{key}/rotate", overlap)
