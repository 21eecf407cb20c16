"""Interactions and online features: `POST /v1/events` (scope `events`) and
`GET /v1/features/{entity}/{id}` (scope `recommend`). Every event and every feature row
belongs to the calling key's tenant.

A batch is checked event by event: the good ones are appended to the durable log before
the answer (and then merged into the user's and the item's online rows, so the next
read on any replica sees them), the bad ones are named by index and field. When any
event is bad the answer is 400 (`invalid_events`), and its body says how many of the
batch were accepted all the same.

A batch sent with a key (`Idempotency-Key`, else the caller's `X-Request-ID`: the SDKs
send one per call, the same on every retry) is appended once per tenant and key: the key
is kept with the batch in the transaction that appends it, and a repeat within a day is
answered as the first was (`Idempotent-Replayed: true`), appending and counting nothing.
So a 503 is always safe to retry with its key, even when the connection to the database
was lost after its commit. Without a key, a commit that fails leaves the batch's fate
unknown: that is a 500 (`events_outcome_unknown`), which no client retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, NotFound, ServekitError, Unavailable, field_path
from deployments.http.envelope import request_id
from deployments.http.fields import AnyCharacterRoute, PathId, StoredText
from deployments.http.hosted import replica_host, run_route
from deployments.http.inference import json_response
from deployments.http.route_docs import REQUEST_ID, example, responses
from deployments.http.search_routes import CATALOG_PATTERN, caller_tenant
from deployments.pipelines.features import FeatureService
from stores.events import (
    MAX_BATCH_KEY,
    BatchKey,
    BatchKeyReused,
    Event,
    EventLogOutcomeUnknown,
    EventLogUnavailable,
)

router = APIRouter(tags=["events"], route_class=AnyCharacterRoute)
INVALID_EVENTS = "invalid_events"
MAX_ERRORS_LISTED = 100
REPLAYED = "Idempotent-Replayed"  # on the answer to a repeat of a batch kept with its key
_RESULT = {"object": "events.result", "accepted": 2, "rejected": 0, "seq": 90412,
           "features_updated": True, "errors": []}  # fmt: skip
_INVALID = {
    "error": {"code": INVALID_EVENTS, "request_id": REQUEST_ID,
              "message": "events.1.type: Input should be 'view', 'click', 'add_to_cart' or "
              "'purchase' (1 of 2 accepted)"},
    **_RESULT, "accepted": 1, "rejected": 1,
    "errors": [{"index": 1, "field": "events.1.type",
                "message": "Input should be 'view', 'click', 'add_to_cart' or 'purchase'"}],
}  # fmt: skip
_FEATURES = {
    "object": "features", "entity": "user", "id": "u-829",
    "views": {"user_activity": {"recent_items": ["sku-1042", "sku-77"], "views": 12,
                                "clicks": 3, "purchases": 1,
                                "category_affinity": {"shoes": 0.75, "jackets": 0.25},
                                "spend": 89.9, "last_event_at": 1764670500}},
    "fresh": {"user_activity": True}, "degraded": False,
}  # fmt: skip


class EventIn(BaseModel):
    """One interaction."""

    model_config = ConfigDict(extra="forbid")

    user: PathId = Field(min_length=1, max_length=256, description="The end user's id.")
    item: PathId = Field(min_length=1, max_length=256, description="The catalog item's id.")
    type: Literal["view", "click", "add_to_cart", "purchase"]
    timestamp: datetime | float | None = Field(
        None,
        description="When it happened: RFC 3339 with a time zone, or Unix seconds; "
        "default: when received.",
    )

    @field_validator("timestamp", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # JSON true is not a time (Python would read it as 1, 1970-01-01T00:00:01Z).
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        return value


class EventsBody(BaseModel):
    """A batch of interactions, each checked on its own."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=example(
            {"catalog": "products", "events": [
                {"user": "u-829", "item": "sku-1042", "type": "click"},
                {"user": "u-829", "item": "sku-1042", "type": "purchase",
                 "timestamp": "2026-12-02T10:15:00Z"}]}
        ),
    )  # fmt: skip

    catalog: str | None = Field(
        None,
        pattern=CATALOG_PATTERN,
        description="The catalog the items belong to (their category, brand, tags and "
        "price feed affinities); default: the tenant's only catalog, if it has one.",
    )
    events: list[dict[str, Any]] = Field(
        min_length=1,
        description="Events: {user, item, type (view, click, add_to_cart, purchase), timestamp?}.",
    )


class IdempotencyKeyReused(BadRequest):
    """An `Idempotency-Key` the tenant sent with another batch within a day."""

    code = "idempotency_key_reused"


class OutcomeUnknown(ServekitError):
    """The log's commit of a batch sent without a key failed: it may be kept or not.
    A 500, which clients do not retry: resent, it could be counted twice."""

    status = 500
    code = "events_outcome_unknown"


class EventError(BaseModel):
    """Why one event of the batch was refused."""

    index: int
    field: str
    message: str


class EventsOut(BaseModel):
    """What the batch did."""

    model_config = ConfigDict(json_schema_extra=example(_RESULT))

    object: str
    accepted: int
    rejected: int
    seq: int
    features_updated: bool
    errors: list[EventError]


def _tenant(call: CallRecord) -> str:
    return caller_tenant(call, "end users")


def _service(host: Any) -> FeatureService:
    service: FeatureService | None = getattr(host, "features", None)
    if service is None:
        raise NotFound("no such route (features are off)")
    return service


def parse_events(
    raw: list[dict[str, Any]], now: float, max_future_s: float, catalog: str | None
) -> tuple[list[Event], list[dict[str, Any]]]:
    """The valid events, and an error per invalid one naming its index and field (the
    message never repeats what was sent)."""
    good: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, doc in enumerate(raw):
        try:
            event = EventIn.model_validate(doc)
            at = _time(event.timestamp, now, max_future_s)
        except ValidationError as e:
            errs = e.errors(include_input=False, include_url=False)
            first = sorted(errs, key=lambda x: x.get("type") != "extra_forbidden")[0]
            name = field_path(first["loc"][:1])  # an unknown field's name is the caller's
            message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
            if first["type"] == "value_error":  # our own check: its words, no prefix
                message = str(first.get("ctx", {}).get("error", message))
            errors.append(_error(index, name, message))
            continue
        except ValueError as e:
            errors.append(_error(index, "timestamp", str(e)))
            continue
        good.append(Event(event.user, event.item, event.type, at, catalog))
    return good, errors


def _error(index: int, name: str, message: str) -> dict[str, Any]:
    field = f"events.{index}.{name}" if name else f"events.{index}"
    return {"index": index, "field": field, "message": message}


def _time(value: datetime | float | None, now: float, max_future_s: float) -> datetime:
    if value is None:
        return datetime.fromtimestamp(now, UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("needs a time zone (e.g. Z)")
        try:
            at = value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00
            raise ValueError("out of range") from None
    else:
        if not 0 <= value < 1e11:
            raise ValueError("Unix seconds out of range")
        at = datetime.fromtimestamp(value, UTC)
    if at.timestamp() > now + max_future_s:
        raise ValueError(f"more than {max_future_s:g} s in the future")
    return at


@router.post(
    "/v1/events",
    summary="Record interactions",
    response_model=EventsOut,
    # 404 while features are off; 503 when the event log does not take the batch.
    responses=responses(400, 404, errors={400: _INVALID}),
)
async def post_events(request: Request, body: Annotated[EventsBody, Body()]) -> Response:
    """Durable when answered; the users' and items' online features reflect them at
    once, on every replica. Bad events are named (index, field) and the rest is kept:
    400 `invalid_events` with the accepted count when any is bad. A batch sent with an
    `Idempotency-Key` header (1 to 128 printable characters), else with an `X-Request-ID`
    (the SDKs send one per call, the same on every retry), is stored once: a repeat
    within 24 h is answered as the first was (`Idempotent-Replayed: true`) and stores
    nothing, so a retry after a 503 or a lost answer never counts its events twice; an
    `Idempotency-Key` sent with another batch is a 400 (`idempotency_key_reused`)."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        service = _service(host)
        tenant = _tenant(call)
        settings = host.args.features
        if len(body.events) > settings.max_events_per_request:
            raise BadRequest(f"events: at most {settings.max_events_per_request} per request")
        headers = request.headers
        key = batch_key(headers.get("idempotency-key"), headers.get("x-request-id"), body)
        call.inputs = len(body.events)
        if body.catalog is not None:
            await _check_catalog(host, tenant, body.catalog)
        await host.plane.admit(call, 0)
        catalog = body.catalog or _only_catalog(host, tenant)
        good, errors = parse_events(body.events, time.time(), settings.max_future_s, catalog)
        try:
            done = await record(service, tenant, good, errors, catalog, key)
        except EventLogUnavailable as e:  # nothing kept, or (keyed) kept once at most
            kept = (
                "resend the batch with the same key: it is stored once"
                if key
                else "nothing was kept"
            )
            raise Unavailable(f"events: the event log is unavailable; {kept}") from e
        except EventLogOutcomeUnknown as e:
            raise OutcomeUnknown(
                "events: the event log failed while committing the batch, which may or may "
                "not be kept; do not resend it as it is (sent with an Idempotency-Key, a "
                "batch is stored once however often it is sent)"
            ) from e
        if done.replayed:
            call.headers[REPLAYED] = "true"
        else:
            service.counted(done.accepted, done.rejected)
        doc: dict[str, Any] = {
            "object": "events.result",
            "accepted": done.accepted,
            "rejected": done.rejected,
            "seq": done.seq,
            "features_updated": done.features_updated,
            "errors": done.errors,
        }
        if not done.errors:
            return json_response(doc)
        first = done.errors[0]
        rid = request_id(request.headers.get("x-request-id"))
        kept = f"{done.accepted} of {len(body.events)} accepted"
        message = f"{first['field']}: {first['message']} ({kept})"
        error = {"code": INVALID_EVENTS, "message": message, "request_id": rid}
        return json_response({"error": error, **doc}, 400)

    return await run_route(request, "/v1/events", work)


@dataclass(frozen=True)
class Keyed:
    """A batch's key, and whether the caller chose it for that (`Idempotency-Key`: the
    same key with another batch is its mistake) or it is a request id (`X-Request-ID`:
    another batch under it is stored as one sent without a key)."""

    key: BatchKey
    chosen: bool


@dataclass(frozen=True)
class Recorded:
    """What a batch did, as its answer says it; `replayed`: the repeat of a batch kept
    with its key, which stored nothing now."""

    accepted: int
    rejected: int
    seq: int
    features_updated: bool
    errors: list[dict[str, Any]]
    replayed: bool = False


def batch_key(chosen: str | None, request_id: str | None, body: EventsBody) -> Keyed | None:
    """The key a batch is stored once under, with a digest of its content (which a
    repeat must match): `Idempotency-Key`, else the caller's `X-Request-ID` (as the
    envelope reads it: its first 128 characters), else none."""
    if chosen is not None and not (0 < len(chosen) <= MAX_BATCH_KEY and chosen.isprintable()):
        raise BadRequest(f"header.idempotency-key: 1 to {MAX_BATCH_KEY} printable characters")
    key = chosen if chosen is not None else (request_id or "")[:MAX_BATCH_KEY]
    if not key.strip() or not key.isprintable():
        return None
    content = json.dumps(
        {"catalog": body.catalog, "events": body.events},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
    return Keyed(BatchKey(key, digest), chosen is not None)


async def record(
    service: FeatureService,
    tenant: str,
    good: list[Event],
    errors: list[dict[str, Any]],
    catalog: str | None,
    keyed: Keyed | None,
) -> Recorded:
    """Append the good events (durable first) and merge them into the online rows; with
    a key, once: a repeat answers what the first call kept, merging its events only when
    the first call never did. Raises `EventLogUnavailable` (nothing appended by this
    call), `EventLogOutcomeUnknown` (no key; appended or not: unknown) and, for a key
    the caller chose, `IdempotencyKeyReused`."""
    listed = errors[:MAX_ERRORS_LISTED]
    log = service.events
    if not good:
        return Recorded(0, len(errors), 0, False, listed)
    if keyed is None or log is None:
        done = await service.ingest(tenant, good, catalog)
        return Recorded(len(good), len(errors), done.seq, done.features_updated, listed)
    outcome = {"rejected": len(errors), "errors": listed}
    try:
        kept = await asyncio.to_thread(log.append_once, tenant, good, keyed.key, outcome)
    except BatchKeyReused as e:
        if keyed.chosen:
            raise IdempotencyKeyReused(
                "header.idempotency-key: sent with another batch within the last 24 h; "
                "a new batch needs a new key"
            ) from e
        return await record(service, tenant, good, errors, catalog, None)
    merged = True  # a repeat of a batch its first call merges (or merged)
    if kept.merge:
        events = good
        if kept.repeat:  # the events as the first call stored them (times included)
            stored = await asyncio.to_thread(log.scan, tenant, kept.first_seq - 1, kept.accepted)
            events = [s.event for s in stored]
            catalog = events[0].catalog if events else catalog
        merged = not events or await service.merge(tenant, events, catalog)
        if not merged:  # the store is down: a repeat may merge them later (and if this
            # mark is lost too, `servekit features rebuild` restores the rows from the log)
            with contextlib.suppress(EventLogUnavailable):
                await asyncio.to_thread(log.batch_merged, tenant, keyed.key.key, False)
    if kept.repeat:
        rejected, listed = int(kept.outcome["rejected"]), list(kept.outcome["errors"])
        return Recorded(kept.accepted, rejected, kept.seq, merged, listed, replayed=True)
    return Recorded(len(good), len(errors), kept.seq, merged, listed)


async def _check_catalog(host: Any, tenant: str, catalog: str) -> None:
    """404 for a catalog the tenant does not have (a typo would be kept in the log and
    leave every attribute feature still): known to this replica, or else to the store
    (made since this replica last looked, or held by the search shards: one indexed
    lookup); 503 when the store does not answer, as when the log does not."""
    search = getattr(host, "search", None)
    if search is None or (tenant, catalog) in search.catalogs:
        return
    try:
        known = await asyncio.to_thread(search.store.has_catalog, tenant, catalog)
    except SQLAlchemyError as e:
        raise Unavailable("catalog: the catalog store is unavailable; nothing was kept") from e
    if not known:
        raise NotFound("catalog: no such catalog")


def _only_catalog(host: Any, tenant: str) -> str | None:
    """The tenant's catalog when it has exactly one (as this replica holds them)."""
    search = getattr(host, "search", None)
    if search is None:
        return None
    names: list[str] = search.catalogs_of(tenant)
    return names[0] if len(names) == 1 else None


@router.get(
    "/v1/features/{entity}/{entity_id:path}",
    summary="One user's or item's online features",
    responses=responses(400, 404, example=_FEATURES),
)
async def get_features(
    request: Request,
    entity: Annotated[Literal["user", "item"], Path(description="user or item")],
    entity_id: Annotated[StoredText, Path(min_length=1, max_length=256)],
) -> Response:
    """Every feature view of the entity: its values (defaults where the row is missing
    or older than the view's TTL), whether a fresh row answered, and `degraded` when the
    store did not answer (every value a default)."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        service = _service(host)
        await host.plane.admit(call, 0)
        got = await service.read(_tenant(call), entity, entity_id)
        return json_response(
            {"object": "features", "entity": entity, "id": entity_id, "views": got.views,
             "fresh": got.fresh, "degraded": got.degraded}
        )  # fmt: skip

    return await run_route(request, "/v1/features", work)
