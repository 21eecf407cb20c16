"""The admin API (`/admin/v1/...`: tenants, keys, usage) and `GET /v1/usage`.

The operator (the bootstrap admin credential) manages every tenant; a key with the
`admin` scope manages its own tenant's keys and reads its usage, and sees no other
tenant (their ids answer 404). Writes reach the registry and this replica's key cache
at once; the other replicas see them within `auth.refresh_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from configs.schema import (
    MAX_KEY_LIFETIME_S,
    MAX_MONTHLY_TEXTS,
    MAX_REQUESTS_PER_S,
    MAX_TEXTS_PER_S,
    MIN_RATE_PER_S,
)
from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, Conflict, Forbidden, NotFound
from deployments.http.fields import StoredText
from deployments.http.hosted import admit_admin_call, replica_host, run_route
from deployments.http.inference import json_response
from deployments.http.route_docs import example, responses
from deployments.tenancy.access import Access
from deployments.tenancy.principal import RESERVED_TENANT_IDS, Principal
from stores.tenants import (
    LIMIT_FIELDS,
    MAX_LIVE_KEYS,
    SCOPES,
    ApiKey,
    KeyState,
    RateLimits,
    Tenant,
    TooManyKeys,
    issue_key,
)

DEFAULT_SCOPES = ["embed", "search", "catalog", "recommend", "events", "usage"]
MAX_USAGE_DAYS = 400
Scope = Literal["embed", "search", "catalog", "recommend", "events", "usage", "admin"]
# Every admin route answers 404 while auth is off (there are no tenants then).
ERRORS = responses(400, 404)
READ = responses(404)

router = APIRouter()
_LIMITS = {"requests_per_s": 50.0, "texts_per_s": 2000.0, "monthly_texts": None}
TENANT_EXAMPLE = {"id": "acme", "name": "Acme", "created_at": "2026-11-02T09:30:00Z",
                  "limits": _LIMITS, "disabled": False}  # fmt: skip
KEY_EXAMPLE = {
    "id": "k_5f1c2a", "tenant_id": "acme", "prefix": "sk-ab12cd34", "name": "search backend",
    "scopes": ["embed", "search"], "models": ["minilm"], "may_pin": False,
    "created_at": "2026-11-02T09:31:00Z", "expires_at": None, "revoked_at": None,
    "rotated_at": None, "replaced_by": None,
    "limits": {"requests_per_s": None, "texts_per_s": None, "monthly_texts": None},
    "state": "active",
}  # fmt: skip
USAGE_EXAMPLE = {
    "tenant_id": "acme", "start": "2026-12-01", "end": "2026-12-02",
    "days": [{"day": "2026-12-01", "model": "minilm", "requests": 1200, "texts": 5400,
              "errors": 3},
             {"day": "2026-12-02", "model": "minilm", "requests": 800, "texts": 3100,
              "errors": 0}],
    "requests": 2000, "texts": 8500, "errors": 3,
}  # fmt: skip


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LimitsBody(_Body):
    """Rate limits and monthly quota; unset fields fall back (key -> tenant -> none)."""

    requests_per_s: float | None = Field(
        None, ge=MIN_RATE_PER_S, le=MAX_REQUESTS_PER_S, description="Requests/s."
    )
    texts_per_s: float | None = Field(
        None, ge=MIN_RATE_PER_S, le=MAX_TEXTS_PER_S, description="Texts/s."
    )
    monthly_texts: int | None = Field(
        None, ge=1, le=MAX_MONTHLY_TEXTS, description="Texts per calendar month."
    )

    model_config = ConfigDict(
        json_schema_extra=example(
            {"requests_per_s": 50, "texts_per_s": 2000, "monthly_texts": None}
        )
    )

    def value(self) -> RateLimits:
        """As the registry stores it."""
        return RateLimits(self.requests_per_s, self.texts_per_s, self.monthly_texts)


class TenantCreate(_Body):
    """A new tenant."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {"name": "Acme", "id": "acme", "limits": {"requests_per_s": 50, "texts_per_s": 2000}}
        )
    )

    name: StoredText = Field(min_length=1, max_length=200)
    id: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$", description="Default: generated."
    )
    limits: LimitsBody | None = Field(None, description="Default: `auth.default_limits`.")

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_TENANT_IDS:
            raise ValueError(f"{value!r} is reserved")
        return value


class TenantPatch(_Body):
    """Changes to a tenant."""

    model_config = ConfigDict(
        json_schema_extra=example({"limits": {"requests_per_s": 100}}, {"disabled": True})
    )

    limits: LimitsBody | None = None
    disabled: bool | None = Field(
        None,
        description="A disabled tenant's keys are refused (listed as `tenant_disabled`) "
        "until it is enabled again.",
    )


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(json_schema_extra=example(TENANT_EXAMPLE))

    id: str
    name: str
    created_at: datetime
    limits: LimitsBody
    disabled: bool


class KeyCreate(_Body):
    """A new API key."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {"name": "search backend", "scopes": ["embed", "search"], "models": ["minilm"]},
            {"name": "nightly batch", "scopes": ["embed"], "expires_in_s": 86400,
             "limits": {"texts_per_s": 500}},
        )
    )  # fmt: skip

    name: StoredText = Field("default", min_length=1, max_length=200)
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES))  # type: ignore[arg-type]
    models: list[StoredText] | None = Field(None, description="Models it may call; default: all.")
    may_pin: bool = Field(False, description="May choose a version (operator only).")
    expires_in_s: int | None = Field(
        None, gt=0, le=MAX_KEY_LIFETIME_S, description="Default: never expires."
    )
    limits: LimitsBody | None = Field(
        None, description="The key's own limits, within the tenant's (a request must fit both)."
    )


class RotateBody(_Body):
    """How long the old key stays valid beside the new one."""

    model_config = ConfigDict(json_schema_extra=example({"overlap_s": 3600}))

    overlap_s: float | None = Field(
        None, ge=0, le=MAX_KEY_LIFETIME_S, description="Default: auth.rotation_overlap_s."
    )


class KeyOut(BaseModel):
    """An API key as stored: never the key itself."""

    model_config = ConfigDict(json_schema_extra=example(KEY_EXAMPLE))

    id: str
    tenant_id: str
    prefix: str
    name: str
    scopes: list[str]
    models: list[str] | None
    may_pin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None = Field(
        description="When it was rotated (its end is then `expires_at`); null: never."
    )
    replaced_by: str | None = Field(
        description="The id of the key its rotation issued, the one to rotate next; "
        "null: never rotated (or rotated before this was recorded)."
    )
    limits: LimitsBody
    state: KeyState = Field(
        description="What a caller presenting the key gets now: only `active` is "
        "accepted; `tenant_disabled`: refused while its tenant is disabled, accepted "
        "again when it is enabled (unless it expired or was revoked meanwhile)."
    )


class KeyCreated(KeyOut):
    """A new key: `key` is shown this once and cannot be read back."""

    model_config = ConfigDict(
        json_schema_extra=example({**KEY_EXAMPLE, "key": "sk-ab12cd34" + "x" * 40})
    )

    key: str


class UsageDay(BaseModel):
    """Counts of one model on one UTC day."""

    day: date
    model: str
    requests: int
    texts: int
    errors: int


class UsageOut(BaseModel):
    """A tenant's usage over a range of days, with totals."""

    model_config = ConfigDict(json_schema_extra=example(USAGE_EXAMPLE))

    tenant_id: str
    start: date
    end: date
    days: list[UsageDay]
    requests: int
    texts: int
    errors: int


def _now() -> datetime:
    return datetime.now(UTC)


def _limits_out(limits: RateLimits) -> dict[str, Any]:
    return {
        "requests_per_s": limits.requests_per_s,
        "texts_per_s": limits.texts_per_s,
        "monthly_texts": limits.monthly_texts,
    }


def tenant_doc(tenant: Tenant) -> dict[str, Any]:
    """A tenant as the API shows it."""
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": tenant.created_at.isoformat(),
        "limits": _limits_out(tenant.limits),
        "disabled": tenant.disabled,
    }


def key_doc(key: ApiKey, now: datetime, tenant_disabled: bool) -> dict[str, Any]:
    """A key as the API shows it (no hash, no key); its `state` is what a caller
    presenting it gets now, its tenant's `disabled` flag included."""
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "prefix": key.prefix,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "models": sorted(key.models) if key.models is not None else None,
        "may_pin": key.may_pin,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "rotated_at": key.rotated_at.isoformat() if key.rotated_at else None,
        "replaced_by": key.replaced_by,
        "limits": _limits_out(key.limits),
        "state": key.state(now, tenant_disabled),
    }


async def _run(
    request: Request, route: str, work: Callable[[Access, Principal], Awaitable[Any]]
) -> Response:
    """The envelope of an admin call: auth must be on; errors mapped as everywhere."""
    host = replica_host()

    async def call_work(call: CallRecord) -> Response:
        access: Access | None = host.access
        principal = call.principal
        if access is None or principal is None:
            raise NotFound("no such route (auth is off)")
        # One request from the key's own request bucket and from the tenant's admin
        # bucket (see `Principal.as_admin_call`); nothing from, and never refused by, the
        # monthly text quota: a tenant past it (its quota lowered mid-month, or replicas
        # that each admitted a second past it) still reads its usage and revokes a
        # leaked key.
        await admit_admin_call(host, call)
        result = await work(access, principal)
        return result if isinstance(result, Response) else json_response(result)

    return await run_route(request, route, call_work)


def _own(principal: Principal, tenant_id: str) -> None:
    """404 for another tenant's id (never confirms it exists)."""
    if not principal.operator and principal.tenant_id != tenant_id:
        raise NotFound("tenant: no such tenant")


async def _tenant(access: Access, principal: Principal, tenant_id: str) -> Tenant:
    _own(principal, tenant_id)
    tenant = await asyncio.to_thread(access.registry.get_tenant, tenant_id)
    if tenant is None:
        raise NotFound("tenant: no such tenant")
    return tenant


@router.get(
    "/admin/v1/tenants",
    summary="List tenants",
    response_model=list[TenantOut],
    responses=READ,
    tags=["admin"],
)
async def list_tenants(request: Request) -> Response:
    """Every tenant (the operator), or the caller's own tenant."""

    async def work(access: Access, principal: Principal) -> Any:
        tenants = await asyncio.to_thread(access.registry.list_tenants)
        return [tenant_doc(t) for t in tenants if principal.operator or t.id == principal.tenant_id]

    return await _run(request, "/admin/v1/tenants", work)


@router.post(
    "/admin/v1/tenants",
    summary="Create a tenant (operator)",
    response_model=TenantOut,
    status_code=201,
    responses=ERRORS,
    tags=["admin"],
)
async def create_tenant(request: Request, body: TenantCreate) -> Response:
    """A new tenant, with the given limits or `auth.default_limits`."""

    async def work(access: Access, principal: Principal) -> Any:
        if not principal.operator:
            raise Forbidden("tenant: only the operator credential creates tenants")
        default = access.settings.default_limits
        limits = body.limits.value() if body.limits else RateLimits(**default.model_dump())
        try:
            tenant = await asyncio.to_thread(
                access.registry.create_tenant, body.name, limits, body.id
            )
        except ValueError as e:
            raise BadRequest("id: a tenant with this id exists") from e
        await access.keys.refresh_now()
        return json_response(tenant_doc(tenant), 201)

    return await _run(request, "/admin/v1/tenants", work)


@router.get(
    "/admin/v1/tenants/{tenant_id}",
    summary="One tenant",
    response_model=TenantOut,
    responses=READ,
    tags=["admin"],
)
async def get_tenant(request: Request, tenant_id: str) -> Response:
    """A tenant: the operator any, a tenant admin its own."""

    async def work(access: Access, principal: Principal) -> Any:
        return tenant_doc(await _tenant(access, principal, tenant_id))

    return await _run(request, "/admin/v1/tenants/{id}", work)


@router.patch(
    "/admin/v1/tenants/{tenant_id}",
    summary="Change a tenant's limits or disable it (operator)",
    response_model=TenantOut,
    responses=ERRORS,
    tags=["admin"],
)
async def patch_tenant(request: Request, tenant_id: str, body: TenantPatch) -> Response:
    """New limits, or disabled (its keys refused on every replica within seconds)."""

    async def work(access: Access, principal: Principal) -> Any:
        if not principal.operator:
            raise Forbidden("tenant: only the operator credential changes a tenant")
        # A merge: only the limits the body names change (null removes one); the others,
        # a monthly quota say, stay as they were.
        limits = body.limits.value() if body.limits else None
        fields = sorted(body.limits.model_fields_set) if body.limits else None
        tenant = await asyncio.to_thread(
            access.registry.update_tenant, tenant_id, limits, body.disabled, fields
        )
        if tenant is None:
            raise NotFound("tenant: no such tenant")
        await access.keys.refresh_now()
        return tenant_doc(tenant)

    return await _run(request, "/admin/v1/tenants/{id}", work)


@router.get(
    "/admin/v1/tenants/{tenant_id}/keys",
    summary="List a tenant's API keys",
    response_model=list[KeyOut],
    responses=READ,
    tags=["admin"],
)
async def list_keys(request: Request, tenant_id: str) -> Response:
    """Every key of the tenant, revoked and expired ones included (never the key)."""

    async def work(access: Access, principal: Principal) -> Any:
        tenant = await _tenant(access, principal, tenant_id)
        keys = await asyncio.to_thread(access.registry.list_keys, tenant_id)
        now = _now()
        return [key_doc(k, now, tenant.disabled) for k in keys]

    return await _run(request, "/admin/v1/tenants/{id}/keys", work)


def _beyond(
    principal: Principal,
    scopes: frozenset[str],
    models: frozenset[str] | None,
    may_pin: bool,
    limits: RateLimits,
) -> list[str]:
    """What of these rights the caller's own key lacks (nothing for the operator): a
    tenant admin grants, rotates and revokes only keys within its own rights."""
    if principal.operator:
        return []
    out = []
    extra = sorted(scopes - principal.scopes)
    if extra:
        out.append(f"scopes {', '.join(extra)} (it has {', '.join(sorted(principal.scopes))})")
    if principal.models is not None:
        if models is None:
            out.append(f"every model (it may use {', '.join(sorted(principal.models))})")
        elif models - principal.models:
            out.append(f"models {', '.join(sorted(models - principal.models))}")
    if may_pin and not principal.may_pin:
        out.append("may_pin")
    for name in LIMIT_FIELDS:
        own = getattr(principal.key_limits, name)
        value = getattr(limits, name)
        if own is not None and (value is None or value > own):
            shown = "unlimited" if value is None else f"{value:g}"
            out.append(f"limits.{name} {shown} (its own: {own:g})")
    return out


def _outlives(principal: Principal, expires: datetime | None, rotating: bool) -> None:
    """403 when a tenant admin's key would issue a key that works after it stops: a key
    that expires tomorrow would otherwise mint one that never does (a rotation's new
    key keeps the old one's expiry, and is shown to the caller)."""
    own = principal.expires_at
    if principal.operator or own is None or (expires is not None and expires <= own):
        return
    until = "never expires" if expires is None else f"expires at {expires.isoformat()}"
    if rotating:
        raise Forbidden(
            f"key: may not rotate a key that outlives this API key (it {until}; this "
            f"key expires at {own.isoformat()})"
        )
    raise Forbidden(
        f"expires_in_s: the new key {until}, after this API key expires "
        f"({own.isoformat()}): set expires_in_s so that it ends by then"
    )


def _check_within(principal: Principal, key: ApiKey, what: str) -> None:
    """403 unless `key`'s rights are within the caller's."""
    beyond = _beyond(principal, key.scopes, key.models, key.may_pin, key.limits)
    if beyond:
        raise Forbidden(f"key: {what} a key with more rights than this one: {'; '.join(beyond)}")


async def _issue(
    access: Access,
    principal: Principal,
    tenant_id: str,
    body: KeyCreate,
    rotated: ApiKey | None = None,
) -> dict[str, Any]:
    """Issue a key as `body` says; for a rotation, `rotated` is the old key, whose
    expiry and pin right the new one keeps (rotating grants nothing new). A tenant
    admin's key grants only rights of its own: its key limits carry over to the new
    key where the body sets none."""
    tenant = await _tenant(access, principal, tenant_id)
    if body.may_pin and not principal.operator and rotated is None:
        raise Forbidden("may_pin: only the operator grants it")
    scopes = frozenset(body.scopes)
    models = frozenset(body.models) if body.models is not None else None
    limits = body.limits.value() if body.limits else RateLimits()
    if not principal.operator:
        limits = limits.over(principal.key_limits)
    beyond = _beyond(principal, scopes, models, body.may_pin, limits)
    if beyond:
        raise Forbidden(f"key: more rights than this API key has: {'; '.join(beyond)}")
    now = _now()
    expires = now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    if rotated is not None:
        expires = rotated.expires_at
    _outlives(principal, expires, rotated is not None)
    try:
        key, record = await asyncio.to_thread(
            lambda: issue_key(
                access.registry,
                access.keys.secret,
                tenant_id,
                name=body.name,
                scopes=scopes,
                models=models,
                may_pin=body.may_pin,
                expires_at=expires,
                limits=limits,
                now=now,
                # A rotation replaces a key: the tenant holds one more only for its overlap.
                max_live=None if rotated is not None else MAX_LIVE_KEYS,
            )
        )
    except TooManyKeys as e:
        raise Conflict(f"key: {e}") from e
    await access.keys.refresh_now()
    return {**key_doc(record, now, tenant.disabled), "key": key}


@router.post(
    "/admin/v1/tenants/{tenant_id}/keys",
    summary="Create an API key (shown once)",
    response_model=KeyCreated,
    status_code=201,
    responses=responses(400, 404, 409),
    tags=["admin"],
)
async def create_key(request: Request, tenant_id: str, body: KeyCreate) -> Response:
    """A new key for the tenant; the response is the only time `key` is shown."""

    async def work(access: Access, principal: Principal) -> Any:
        return json_response(await _issue(access, principal, tenant_id, body), 201)

    return await _run(request, "/admin/v1/tenants/{id}/keys", work)


async def _revoke(
    access: Access, principal: Principal, tenant_id: str, key_id: str
) -> dict[str, Any]:
    """Revoke a key of the tenant, if its rights are within the caller's."""
    _own(principal, tenant_id)
    key = await asyncio.to_thread(access.registry.get_key, tenant_id, key_id)
    if key is None:
        raise NotFound("key: no such key")
    _check_within(principal, key, "may not revoke")
    now = _now()
    revoked = await asyncio.to_thread(access.registry.revoke_key, tenant_id, key_id, now)
    if revoked is None:
        raise NotFound("key: no such key")
    await access.keys.refresh_now()
    return key_doc(revoked, now, tenant_disabled=False)  # revoked, whatever its tenant


@router.delete(
    "/admin/v1/tenants/{tenant_id}/keys/{key_id}",
    summary="Revoke an API key",
    response_model=KeyOut,
    responses=READ,
    tags=["admin"],
)
async def revoke_key(request: Request, tenant_id: str, key_id: str) -> Response:
    """Revoke now: refused on this replica at once, on every replica within seconds."""

    async def work(access: Access, principal: Principal) -> Any:
        return await _revoke(access, principal, tenant_id, key_id)

    return await _run(request, "/admin/v1/tenants/{id}/keys/{key}", work)


async def _rotate(
    access: Access,
    principal: Principal,
    tenant_id: str,
    key_id: str,
    body: RotateBody | None = None,
) -> dict[str, Any]:
    """A new key with the old one's rights, if those are within the caller's; the old
    key stays valid for the overlap."""
    _own(principal, tenant_id)
    old = await asyncio.to_thread(access.registry.get_key, tenant_id, key_id)
    now = _now()
    if old is None:
        raise NotFound("key: no such key")
    _check_within(principal, old, "may not rotate")
    if not old.live(now):
        # It is listed, so "no such key" misled: say why, and what to do instead.
        state = old.state(now, tenant_disabled=False)
        raise Conflict(f"key: {state}; only a live key rotates: create a new key instead")
    if old.rotated_at is not None:
        # Its replacement would inherit the end of this key's overlap, not the end
        # it was created with: rotate the key that replaced it instead.
        raise _rotated_already(old)
    overlap = body.overlap_s if body and body.overlap_s is not None else None
    if overlap is None:
        overlap = access.settings.rotation_overlap_s
    spec = KeyCreate(
        name=old.name,
        scopes=sorted(old.scopes),
        models=sorted(old.models) if old.models is not None else None,
        may_pin=old.may_pin,
        limits=LimitsBody(**_limits_out(old.limits)),
    )
    created = await _issue(access, principal, tenant_id, spec, rotated=old)
    # The old key ends after the overlap, or sooner if it was to expire sooner;
    # marked rotated in the same step, once: a rotation that lost a race to
    # another takes back the key it issued.
    until = now + timedelta(seconds=overlap)
    claimed = await asyncio.to_thread(
        access.registry.rotate_out, tenant_id, key_id, until, now, created["id"]
    )
    if claimed is None:
        # Another rotation, or a revocation, came first: the replacement must not
        # outlive it. Revoked: a leaked key's replacement would have stayed live.
        await asyncio.to_thread(access.registry.revoke_key, tenant_id, created["id"], now)
        await access.keys.refresh_now()
        again = await asyncio.to_thread(access.registry.get_key, tenant_id, key_id)
        if again is not None and again.revoked_at is not None:
            raise Conflict("key: revoked while it was rotated; its replacement is revoked too")
        raise _rotated_already(again)
    await access.keys.refresh_now()
    return created


def _rotated_already(key: ApiKey | None) -> Conflict:
    """The 409 of rotating a key again, naming its replacement where it is recorded
    (keys rotated before migration 0009 have none)."""
    replacement = key.replaced_by if key is not None else None
    if replacement is None:
        return Conflict("key: already rotated; rotate the key that replaced it")
    return Conflict(f"key: already rotated; rotate {replacement}, the key that replaced it")


@router.post(
    "/admin/v1/tenants/{tenant_id}/keys/{key_id}/rotate",
    summary="Rotate an API key (new key; the old one expires after an overlap)",
    response_model=KeyCreated,
    status_code=201,
    responses=responses(400, 404, 409),
    tags=["admin"],
)
async def rotate_key(
    request: Request, tenant_id: str, key_id: str, body: RotateBody | None = None
) -> Response:
    """A new key with the old one's rights; the old key stays valid for `overlap_s`."""

    async def work(access: Access, principal: Principal) -> Any:
        return json_response(await _rotate(access, principal, tenant_id, key_id, body), 201)

    return await _run(request, "/admin/v1/tenants/{id}/keys/{key}/rotate", work)


def _days(start: date | None, end: date | None) -> tuple[date, date]:
    today = _now().date()
    end = end or today
    start = start or end.replace(day=1)
    if start > end:
        raise BadRequest("start: after end")
    if (end - start).days > MAX_USAGE_DAYS:
        raise BadRequest(f"start: at most {MAX_USAGE_DAYS} days before end")
    return start, end


async def _usage(access: Access, tenant_id: str, start: date, end: date) -> dict[str, Any]:
    await access.usage.flush()  # this replica's counts so far
    rows = await asyncio.to_thread(access.registry.usage, tenant_id, start, end)
    days = [
        {
            "day": r.day.isoformat(),
            "model": r.model,
            "requests": r.requests,
            "texts": r.texts,
            "errors": r.errors,
        }
        for r in rows
    ]
    return {
        "tenant_id": tenant_id,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": days,
        "requests": sum(r.requests for r in rows),
        "texts": sum(r.texts for r in rows),
        "errors": sum(r.errors for r in rows),
    }


StartDay = Annotated[
    date | None, Query(description="First UTC day (default: the first of `end`'s month).")
]
EndDay = Annotated[date | None, Query(description="Last UTC day (default: today).")]


@router.get(
    "/admin/v1/tenants/{tenant_id}/usage",
    summary="A tenant's usage",
    response_model=UsageOut,
    responses=ERRORS,
    tags=["admin"],
)
async def tenant_usage(
    request: Request,
    tenant_id: str,
    start: StartDay = None,
    end: EndDay = None,
) -> Response:
    """Requests, texts and errors per model and day (counted usage lags by about
    `auth.usage_flush_s`)."""

    async def work(access: Access, principal: Principal) -> Any:
        await _tenant(access, principal, tenant_id)
        return await _usage(access, tenant_id, *_days(start, end))

    return await _run(request, "/admin/v1/tenants/{id}/usage", work)


@router.get(
    "/v1/usage",
    summary="Your tenant's usage",
    response_model=UsageOut,
    responses=ERRORS,
    tags=["usage"],
)
async def own_usage(
    request: Request,
    start: StartDay = None,
    end: EndDay = None,
) -> Response:
    """Requests, texts and errors of the calling key's tenant, per model and day."""

    async def work(access: Access, principal: Principal) -> Any:
        if principal.operator:
            raise BadRequest("tenant: the operator has no usage; see /admin/v1/tenants/{id}/usage")
        return await _usage(access, principal.tenant_id, *_days(start, end))

    return await _run(request, "/v1/usage", work)


__all__ = ["SCOPES", "router"]
