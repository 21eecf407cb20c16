/**
 * Names for the request and response types of api/openapi.json (generated into
 * `openapi.ts` by openapi-typescript; never edit that file by hand).
 *
 * A few routes answer JSON the document leaves open (`{}`); for those the types below
 * say what the route answers today, and give way to the document's own schema as soon
 * as it has one (`Documented<...>`).
 */

import type { components, operations, paths } from "./openapi.js";

export type { components, operations, paths };

type Schemas = components["schemas"];

/** The JSON body of a path's operation's success answer (200 or 201). */
export type ResponseOf<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  responses: infer R;
}
  ? R extends { 200: { content: { "application/json": infer J } } }
    ? J
    : R extends { 201: { content: { "application/json": infer J } } }
      ? J
      : never
  : never;

/** `T`, unless the document leaves it open (`unknown`): then `Fallback`. */
export type Documented<T, Fallback> = unknown extends T ? Fallback : T;

// ---- /v1/embeddings ------------------------------------------------------------------
export type EmbeddingRequest = Schemas["EmbeddingRequest"];
/** The answer (OpenAI's shape) and `version`: the model version that served the call,
 * from the `X-Model-Version` header (`model` is only the name asked for; with a traffic
 * split two calls may be served by different versions, whose vectors must not be
 * mixed). Absent when the answer did not say. */
export type EmbeddingResponse = Schemas["EmbeddingResponse"] & { version?: string };

// ---- /v1/search, catalogs and items ----------------------------------------------------
export type SearchRequest = Schemas["SearchBody"];
export type SearchResponse = Schemas["SearchOut"];
export type SearchHit = Schemas["SearchHit"];
export type CatalogItem = Schemas["ItemIn"];
export type StoredItem = Schemas["ItemOut"];
export type UpsertResult = Schemas["UpsertOut"];
export type CatalogSettings = Schemas["CatalogSettingsIn"];
export type Catalog = Schemas["CatalogOut"];
export type CatalogList = Documented<
  ResponseOf<"/v1/catalogs", "get">,
  { object: "list"; data: Catalog[] }
>;
export type DeletedItem = Documented<
  ResponseOf<"/v1/catalogs/{catalog}/items/{item_id}", "delete">,
  { id: string; deleted: boolean }
>;

// ---- /v1/recommendations --------------------------------------------------------------
export type RecommendationsRequest = Schemas["RecommendBody"];
export type RecommendationsResponse = Schemas["RecommendOut"];

// ---- /v1/events and /v1/features -------------------------------------------------------
export type EventsRequest = Schemas["EventsBody"];
export type EventsResult = Schemas["EventsOut"];
/** One interaction, as `EventsRequest.events` takes it. */
export interface Event {
  user: string;
  item: string;
  type: "view" | "click" | "add_to_cart" | "purchase";
  /** RFC 3339 with a time zone, or Unix seconds; default: when received. */
  timestamp?: string | number | null;
}
export type Features = Documented<
  ResponseOf<"/v1/features/{entity}/{entity_id}", "get">,
  {
    object: "features";
    entity: "user" | "item";
    id: string;
    views: Record<string, Record<string, unknown>>;
    fresh: Record<string, boolean>;
    degraded: boolean;
  }
>;

// ---- /v1/models and /v1/usage ----------------------------------------------------------
export type ModelList = Schemas["ModelList"];
export type ModelCard = Schemas["ModelCard"];
export type ModelDetail = Documented<
  ResponseOf<"/v1/models/{name}", "get">,
  ModelCard & { rollout?: Record<string, unknown> | null; shadow?: Record<string, unknown> | null }
>;
export type Usage = Schemas["UsageOut"];
export type UsageDay = Schemas["UsageDay"];

// ---- /admin/v1 -------------------------------------------------------------------------
export type Tenant = Schemas["TenantOut"];
export type TenantCreate = Schemas["TenantCreate"];
export type TenantPatch = Schemas["TenantPatch"];
export type Limits = Schemas["LimitsBody"];
export type ApiKey = Schemas["KeyOut"];
export type ApiKeyCreated = Schemas["KeyCreated"];
export type KeyCreate = Schemas["KeyCreate"];
export type KeyRotate = Schemas["RotateBody"];
export type SearchIndexes = Documented<
  ResponseOf<"/admin/v1/search/indexes", "get">,
  {
    /** The change log's position (every tenant's writes): the operator's answer only. */
    seq?: number;
    spaces: string[];
    pending: Record<string, number>;
    catalogs: {
      tenant_id: string;
      catalog: string;
      items: number;
      indexes: Record<string, { vectors: number; complete: boolean }>;
    }[];
  }
>;

export type DashboardState = Schemas["DashboardState"];
export type MetricsSnapshot = Schemas["MetricsSnapshot"];

// ---- errors ----------------------------------------------------------------------------
export type ErrorBody = Schemas["ErrorBody"];

/** A UTC day: `YYYY-MM-DD`, or a `Date` (its UTC day). */
export type Day = string | Date;

/** The range of days a usage report covers (defaults: the month so far). */
export interface UsageRange {
  start?: Day;
  end?: Day;
}
