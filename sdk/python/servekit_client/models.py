"""Typed responses of servekit's API.

Each model names the schema of the OpenAPI document (`api/openapi.json`) it mirrors in
`openapi_schema`; a test of the repository fails when a model's fields or types drift
from that schema. Models whose route the document leaves untyped have `openapi_schema =
None` and are checked against the live service instead.

Unknown fields are kept (`model_extra`), not refused: `/v1` only grows, so a response
may carry fields newer than this package.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema

from servekit_client.response import ResponseInfo

__all__ = [
    "ApiKey",
    "AttrValue",
    "Catalog",
    "CatalogList",
    "CounterSeries",
    "CreatedApiKey",
    "DashboardState",
    "DeploymentState",
    "EmbeddingData",
    "Embeddings",
    "EventError",
    "EventsResult",
    "Features",
    "HistogramSeries",
    "Item",
    "ItemDeleted",
    "Limits",
    "MetricsSnapshot",
    "ModelCard",
    "ModelDetail",
    "ModelList",
    "Recommendations",
    "SearchHit",
    "SearchIndexes",
    "SearchResult",
    "Tenant",
    "TenantUsageToday",
    "TokenUsage",
    "UpsertResult",
    "UsageDay",
    "UsageReport",
]

# An item attribute's value (for filters): as the service stores it.
AttrValue = str | int | float | bool | list[str]


class ApiModel(BaseModel):
    """Base of every response model. A client method's result has `response`: what
    the answer's headers said (request id, model version, rate limit)."""

    # Not a field nor a private attribute: pydantic compares both, and two answers with
    # the same body (a repeat answered as the first) are equal whatever their headers.
    __slots__ = ("_response",)
    model_config = ConfigDict(extra="allow")
    openapi_schema: ClassVar[str | None] = None

    @property
    def response(self) -> ResponseInfo | None:
        """The answer's status, request id, model version and rate limit; None for a
        model not returned by a call (built or copied)."""
        info: ResponseInfo | None = getattr(self, "_response", None)
        return info


# ---- embeddings -------------------------------------------------------------------


class TokenUsage(ApiModel):
    """Tokens an embeddings call counted."""

    openapi_schema = "Usage"
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(ApiModel):
    """One input's vector: floats, or base64-packed float32 with `encoding_format`."""

    openapi_schema = "EmbeddingData"
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Embeddings(ApiModel):
    """`POST /v1/embeddings` (OpenAI's shape), and `version`: the model version that
    served the call, from the `X-Model-Version` header (`model` is only the name asked
    for; with a traffic split two calls may be served by different versions, whose
    vectors must not be mixed). None when the answer did not say."""

    openapi_schema = "EmbeddingResponse"
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: TokenUsage
    # Not in the body, so not in the document's schema: filled from the header.
    version: SkipJsonSchema[str | None] = None


# ---- catalogs and search -------------------------------------------------------


class Catalog(ApiModel):
    """A catalog of the caller's tenant."""

    openapi_schema = "CatalogOut"
    name: str
    items: int
    created_at: str
    settings: dict[str, Any]


class CatalogList(ApiModel):
    """`GET /v1/catalogs`."""

    object: str
    data: list[Catalog]


class Item(ApiModel):
    """A stored catalog item."""

    openapi_schema = "ItemOut"
    id: str
    text: dict[str, str]
    attributes: dict[str, AttrValue]
    updated_at: str | None


class ItemDeleted(ApiModel):
    """`DELETE /v1/catalogs/{catalog}/items/{item_id}`."""

    id: str
    deleted: bool


class UpsertResult(ApiModel):
    """What an upsert wrote: durable, searchable on every replica within a second."""

    openapi_schema = "UpsertOut"
    catalog: str
    upserted: int
    seq: int


class SearchHit(ApiModel):
    """One search result."""

    openapi_schema = "SearchHit"
    id: str
    score: float
    text: dict[str, str]
    attributes: dict[str, AttrValue]


class SearchResult(ApiModel):
    """Ranked items, the version that embedded the query and the index it searched."""

    openapi_schema = "SearchOut"
    object: str
    catalog: str
    model: str
    version: str
    index: dict[str, Any]
    data: list[SearchHit]


class Recommendations(ApiModel):
    """`POST /v1/recommendations`: ranked items, the version that ranked them, and
    `source` (model: the two stages; popular: a cold start, or `degraded`)."""

    openapi_schema = "RecommendOut"
    object: str
    catalog: str
    user: str
    model: str
    version: str
    source: str
    degraded: bool
    index: dict[str, Any]
    data: list[SearchHit]


class SearchIndexes(ApiModel):
    """`GET /admin/v1/search/indexes`: per catalog, each version's index completeness;
    `seq`, the change log's position (every tenant's writes), for the operator only."""

    seq: int | None = None
    spaces: list[str]
    pending: dict[str, int]
    catalogs: list[dict[str, Any]]


# ---- events and features --------------------------------------------------------


class EventError(ApiModel):
    """Why one event of a batch was refused."""

    openapi_schema = "EventError"
    index: int
    field: str
    message: str


class EventsResult(ApiModel):
    """What a batch of events did."""

    openapi_schema = "EventsOut"
    object: str
    accepted: int
    rejected: int
    seq: int
    features_updated: bool
    errors: list[EventError]


class Features(ApiModel):
    """`GET /v1/features/{entity}/{id}`: values per feature view, whether a fresh row
    answered each view, and `degraded` when the store did not answer."""

    object: str
    entity: str
    id: str
    views: dict[str, dict[str, Any]]
    fresh: dict[str, bool]
    degraded: bool


# ---- models ---------------------------------------------------------------------


class ModelCard(ApiModel):
    """A served model with its versions and their current traffic weights."""

    openapi_schema = "ModelCard"
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "servekit"
    versions: list[dict[str, Any]]


class ModelList(ApiModel):
    """`GET /v1/models`."""

    openapi_schema = "ModelList"
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelDetail(ApiModel):
    """`GET /v1/models/{name}`: the card, and for admins rollout and shadow state."""

    id: str
    object: str
    created: int
    owned_by: str
    versions: list[dict[str, Any]]
    rollout: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None


# ---- tenants, keys, usage -------------------------------------------------------


class Limits(ApiModel):
    """Rate limits and monthly quota; unset: falls back (key -> tenant -> none)."""

    openapi_schema = "LimitsBody"
    requests_per_s: float | None = None
    texts_per_s: float | None = None
    monthly_texts: int | None = None


class Tenant(ApiModel):
    """A tenant."""

    openapi_schema = "TenantOut"
    id: str
    name: str
    created_at: datetime
    limits: Limits
    disabled: bool


class ApiKey(ApiModel):
    """An API key as stored: never the key itself."""

    openapi_schema = "KeyOut"
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
    rotated_at: datetime | None
    replaced_by: str | None
    limits: Limits
    state: Literal["active", "tenant_disabled", "expired", "revoked"]


class CreatedApiKey(ApiKey):
    """A new key: `key` is shown this once and cannot be read back."""

    openapi_schema = "KeyCreated"
    key: str


class UsageDay(ApiModel):
    """Counts of one model on one UTC day."""

    openapi_schema = "UsageDay"
    day: date
    model: str
    requests: int
    texts: int
    errors: int


class UsageReport(ApiModel):
    """A tenant's usage over a range of days, with totals."""

    openapi_schema = "UsageOut"
    tenant_id: str
    start: date
    end: date
    days: list[UsageDay]
    requests: int
    texts: int
    errors: int


# ---- the dashboard's data --------------------------------------------------------


class DeploymentState(ApiModel):
    """A deployment of the application and its replicas."""

    openapi_schema = "DeploymentState"
    name: str
    status: str
    running: int
    replicas: int


class TenantUsageToday(ApiModel):
    """One tenant's counts of the day."""

    openapi_schema = "TenantUsageToday"
    tenant_id: str
    requests: int
    texts: int
    errors: int


class DashboardState(ApiModel):
    """`GET /admin/v1/dashboard/state`: models with weights and rollout state,
    deployments with replicas, today's usage per tenant."""

    openapi_schema = "DashboardState"
    at: float
    refresh_s: float
    application: str
    models: list[dict[str, Any]]
    deployments: list[DeploymentState]
    day: str
    usage: list[TenantUsageToday]


class CounterSeries(ApiModel):
    """A counter's total, summed over every replica."""

    openapi_schema = "CounterSeries"
    name: str
    labels: dict[str, str]
    value: float


class HistogramSeries(ApiModel):
    """A histogram's cumulative bucket counts, summed over every replica."""

    openapi_schema = "HistogramSeries"
    name: str
    labels: dict[str, str]
    bounds: list[float]
    counts: list[float]
    count: float
    sum: float


class MetricsSnapshot(ApiModel):
    """`GET /admin/v1/dashboard/metrics`: servekit's series over every node."""

    openapi_schema = "MetricsSnapshot"
    at: float
    nodes: int
    nodes_failed: int
    node_set: str
    counters: list[CounterSeries]
    histograms: list[HistogramSeries]
