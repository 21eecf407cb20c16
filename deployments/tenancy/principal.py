"""The caller of one request, as its API key (or the operator credential) allows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from deployments.errors import Forbidden
from stores.tenants import SCOPES, RateLimits

OPERATOR = "operator"  # tenant id of the bootstrap admin credential; not a real tenant
# The metrics' label of the tenants without series of their own (`auth.metrics_tenants`).
POOLED_TENANT = "other"
# The one tenant when auth is off: what catalogs, events and features are kept under.
NO_AUTH_TENANT = "default"
# Ids no tenant may take: a tenant by one of these names would read as the operator in
# logs and usage, as every unnamed tenant in the metrics, or would own the data written
# while auth was off.
RESERVED_TENANT_IDS = frozenset({OPERATOR, POOLED_TENANT, NO_AUTH_TENANT})
# The limiter subject of a tenant's admin calls (`<tenant>/admin`): no key id is `admin`.
ADMIN_SUBJECT = "admin"


@dataclass(frozen=True)
class Principal:
    """A resolved caller: its tenant, key and rights."""

    tenant_id: str
    key_id: str
    prefix: str
    scopes: frozenset[str]
    models: frozenset[str] | None  # None: every model
    may_pin: bool
    limits: RateLimits  # the tenant's limits, counted for the whole tenant
    subject: str  # whose buckets those are: the tenant
    # The bootstrap admin credential (every tenant, every right): set by
    # `operator_principal` only, never derived from a tenant id a key could carry.
    is_operator: bool = False
    # The key's own limits (none: only the tenant's apply), counted for the key alone
    # and always within the tenant's: a request must fit both.
    key_limits: RateLimits = field(default_factory=RateLimits)
    # When the key stops working (None: never): a key it issues may not outlive it.
    expires_at: datetime | None = None

    @property
    def key_subject(self) -> str:
        """Whose buckets the key's own limits are."""
        return f"{self.tenant_id}/{self.key_id}"

    @property
    def operator(self) -> bool:
        """The bootstrap admin credential: every tenant, every right."""
        return self.is_operator

    @property
    def admin(self) -> bool:
        """May read internal model details and manage its tenant's keys."""
        return "admin" in self.scopes

    def require(self, scope: str) -> None:
        """403 naming `scope` unless the key has it (the route's scope is documented:
        naming it tells the caller nothing it could not look up, and what to ask for)."""
        if scope not in self.scopes:
            raise Forbidden(
                f"scope: this route needs the {scope!r} scope, which this API key lacks"
            )

    def may_use(self, model: str) -> bool:
        """Whether the key may call `model`."""
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        """403 unless the key may call `model` (whether or not it is served: the message
        is the same for a model that does not exist)."""
        if not self.may_use(model):
            raise Forbidden("model: this API key may not call this model")

    def as_admin_call(self) -> Principal:
        """The caller as an admin call (`/admin/...`, `/v1/usage`) is limited: by its
        key's own rate limits, and by a bucket of the tenant's admin calls
        (`<tenant>/admin`) at the tenant's requests_per_s, not by the tenant's traffic
        buckets: traffic at the tenant's rate (a batch job, a leaked key hammering the
        API) took every token, and its admin could neither revoke the key nor read
        usage until it stopped. No monthly quota applies."""
        return replace(
            self,
            subject=f"{self.tenant_id}/{ADMIN_SUBJECT}",
            limits=RateLimits(requests_per_s=self.limits.requests_per_s),
            key_limits=replace(self.key_limits, monthly_texts=None),
        )

    def check_pin(self) -> None:
        """403 unless the key may choose a version itself."""
        if not (self.may_pin or self.admin):
            raise Forbidden("version: this API key may not choose a version (may_pin)")


def operator_principal() -> Principal:
    """The rights of the bootstrap admin credential."""
    return Principal(
        tenant_id=OPERATOR,
        key_id=OPERATOR,
        prefix=OPERATOR,
        scopes=frozenset(SCOPES),
        models=None,
        may_pin=True,
        limits=RateLimits(),
        subject=OPERATOR,
        is_operator=True,
    )
