"""Feature definitions: the entities, the feature views over them and how each feature is
computed from interactions, with its default for an entity the store does not know.

The ideas are Feast's (entities, feature views with a TTL, one online store), the file
is servekit's own (`configs/features.yaml`; the README says why Feast is not used).
A feature view belongs to one entity (`user` or `item`) and is stored as one row per
entity and tenant; a row is fresh for `ttl_s` after the newest event it counts, and
older (or missing) rows answer every feature's `default`. What each feature counts:

- `count`: events of `event_types` (all types when empty);
- `sum`: the item's numeric `attribute` (e.g. `price`) over events of `event_types`;
- `recent_items`: the last `max_items` distinct items of `event_types`, newest first;
- `affinity`: per value of the item's `attribute` (category, brand, tags), the events'
  weights (`event_weights`), read back as shares of the total, the `top_k` largest;
- `first_at` / `last_at`: the time (Unix seconds) of the first / latest such event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from configs.settings import PROJECT_ROOT

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
EventType = Literal["view", "click", "add_to_cart", "purchase"]
ENTITIES = ("user", "item")
DEFAULT_DEFINITIONS = PROJECT_ROOT / "configs" / "features.yaml"
FeatureName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class _Strict(BaseModel):
    # Errors never echo the value (see configs.schema).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EntitySpec(_Strict):
    """What a feature view is keyed by; the key is the event's field of the same name."""

    description: str = Field("", description="What one entity is.")


class FeatureSpec(_Strict):
    """One feature: what it counts and what it is when the entity has no fresh row."""

    kind: Literal["count", "sum", "recent_items", "affinity", "first_at", "last_at"]
    event_types: list[EventType] = Field(
        default_factory=list, description="The events it counts; empty: every type."
    )
    attribute: str | None = Field(
        None,
        min_length=1,
        description="The item attribute (or text field) it reads: `sum` and `affinity`.",
    )
    max_items: int = Field(20, ge=1, le=200, description="`recent_items`: how many kept.")
    top_k: int = Field(10, ge=1, le=100, description="`affinity`: how many values read back.")
    default: Any = Field(None, description="Its value for a missing or stale entity.")

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.kind in ("sum", "affinity") and self.attribute is None:
            raise ValueError(f"attribute: required for kind {self.kind}")
        if self.kind not in ("sum", "affinity") and self.attribute is not None:
            raise ValueError(f"attribute: only kinds sum and affinity read one, not {self.kind}")
        expected = _DEFAULT_TYPES[self.kind]
        if self.default is not None and not _is(self.default, expected):
            raise ValueError(f"default: expected {expected} for kind {self.kind}")
        return self

    def default_value(self) -> Any:
        """The declared default, else the kind's empty value (0, [], {})."""
        if self.default is not None:
            return self.default
        return {"list": [], "map": {}}.get(_DEFAULT_TYPES[self.kind], 0)


_DEFAULT_WEIGHTS: dict[EventType, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
}
_DEFAULT_TYPES = {
    "count": "number",
    "sum": "number",
    "first_at": "number",
    "last_at": "number",
    "recent_items": "list",
    "affinity": "map",
}


def _is(value: Any, expected: str) -> bool:
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in value.items()
    )


class FeatureViewSpec(_Strict):
    """Features of one entity, stored together and read in one round trip."""

    entity: Literal["user", "item"]
    ttl_s: float = Field(gt=0, le=3 * 365 * 86400, description="Freshness after the newest event.")
    features: dict[FeatureName, FeatureSpec] = Field(min_length=1, max_length=100)


class FeatureDefinitions(_Strict):
    """The whole definitions file."""

    entities: dict[Literal["user", "item"], EntitySpec]
    event_weights: dict[EventType, float] = Field(
        default_factory=lambda: dict(_DEFAULT_WEIGHTS),
        description=(
            "How much one event of each type adds to an affinity and to an item's popularity."
        ),
    )
    feature_views: dict[FeatureName, FeatureViewSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _entities_declared(self) -> FeatureDefinitions:
        for name, view in self.feature_views.items():
            if view.entity not in self.entities:
                raise ValueError(
                    f"feature_views.{name}.entity: {view.entity!r} is not among entities"
                )
        return self

    def views_of(self, entity: str) -> dict[str, FeatureViewSpec]:
        """The feature views keyed by `entity`."""
        return {n: v for n, v in self.feature_views.items() if v.entity == entity}

    def weight(self, event_type: str) -> float:
        """An event type's affinity weight (0 when not listed)."""
        return float(self.event_weights.get(event_type, 0.0))  # type: ignore[call-overload]

    def weights(self) -> dict[str, float]:
        """Every listed event type's weight (what popular items are ranked by too)."""
        return {str(kind): float(w) for kind, w in self.event_weights.items()}


class FeatureSettings(_Strict):
    """Online features and events (`POST /v1/events`, `GET /v1/features/...`): the
    application's `args.features`."""

    enabled: bool = Field(True, description="Serve events and online features.")
    definitions: str | None = Field(
        None, description="The definitions file (relative: to the project); default "
        "configs/features.yaml.",
    )  # fmt: skip
    max_events_per_request: int = Field(1000, ge=1, le=10_000)
    max_future_s: float = Field(
        300.0, ge=0, le=86400, description="How far ahead of the clock an event's time may be."
    )
    store_timeout_s: float = Field(
        0.1, gt=0, le=5, description="Bound on one online store call (Redis); then defaults."
    )

    # The definitions as validation read them (when enabled): `loaded` reads it no second time.
    _loaded: FeatureDefinitions | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _definitions_load(self) -> FeatureSettings:
        if self.enabled:
            try:
                self._loaded = load_definitions(self.definitions)
            except DefinitionsError as e:
                raise ValueError(f"definitions: {e}") from e
        return self

    def loaded(self) -> FeatureDefinitions:
        """The definitions file, read and checked (once, when these settings were)."""
        return self._loaded if self._loaded is not None else load_definitions(self.definitions)


# What a recommender reads of the online features: view -> (entity, feature -> kind).
RECOMMENDER_READS: dict[str, tuple[str, dict[str, str]]] = {
    "user_activity": ("user", {
        "recent_items": "recent_items", "category_affinity": "affinity",
        "brand_affinity": "affinity", "views": "count", "clicks": "count",
        "add_to_carts": "count", "purchases": "count"}),
    "item_popularity": ("item", {
        "views": "count", "clicks": "count", "add_to_carts": "count", "purchases": "count",
        "last_event_at": "last_at"}),
}  # fmt: skip


def lacks_for_recommender(definitions: FeatureDefinitions) -> list[str]:
    """What of `RECOMMENDER_READS` the definitions do not define as the recommender
    reads it (empty: nothing)."""
    out = []
    for name, (entity, features) in RECOMMENDER_READS.items():
        view = definitions.feature_views.get(name)
        if view is None:
            out.append(f"feature view {name} (entity {entity})")
            continue
        if view.entity != entity:
            out.append(f"feature_views.{name}.entity {entity}")
        for feature, kind in features.items():
            spec = view.features.get(feature)
            if spec is None or spec.kind != kind:
                out.append(f"feature_views.{name}.features.{feature} (kind {kind})")
    return out


class DefinitionsError(ValueError):
    """A definitions file that cannot be used; the message says where and why."""


def load_definitions(path: str | Path | None = None) -> FeatureDefinitions:
    """The definitions in `path` (relative: to the project), else the default file."""
    where = Path(path) if path else DEFAULT_DEFINITIONS
    if not where.is_absolute():
        where = PROJECT_ROOT / where
    try:
        doc = yaml.safe_load(where.read_text())
    except FileNotFoundError as e:
        raise DefinitionsError(f"{where}: no such file") from e
    except IsADirectoryError as e:
        raise DefinitionsError(f"{where}: a folder, expected a file") from e
    except OSError as e:
        raise DefinitionsError(f"{where}: cannot be read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise DefinitionsError(f"{where}: not valid YAML") from e
    try:
        return FeatureDefinitions.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top)"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise DefinitionsError(f"{where}: {loc}: {message}{more}") from e
