/**
 * `ServekitClient`: every `/v1` route and the admin API (`/admin/v1`), typed from
 * api/openapi.json. Each method resolves to the answer's JSON body; `client.request`
 * gives the status and headers too.
 */

import { type ApiResponse, type Call, type ClientOptions, type EventsRequestOptions, type ModelRequestOptions, type RequestOptions, refuseLoneSurrogate, Transport } from "./http.js";
import type * as T from "./types.js";

/** A client of one servekit service. */
export class ServekitClient {
  /** `POST /v1/embeddings` (OpenAI-compatible). */
  readonly embeddings: EmbeddingsApi;
  /** `POST /v1/recommendations`: items for a user. */
  readonly recommendations: RecommendationsApi;
  /** `/v1/catalogs`: catalogs and their items. */
  readonly catalogs: CatalogsApi;
  /** `POST /v1/events`: interactions. */
  readonly events: EventsApi;
  /** `GET /v1/features/{entity}/{id}`: online features. */
  readonly features: FeaturesApi;
  /** `/v1/models`: served models, versions and weights. */
  readonly models: ModelsApi;
  /** `GET /v1/usage`: the calling key's tenant's usage. */
  readonly usage: UsageApi;
  /** `/admin/v1`: tenants, keys, usage, search indexes. */
  readonly admin: AdminApi;
  private readonly transport: Transport;

  constructor(options: ClientOptions = {}) {
    this.transport = new Transport(options);
    this.embeddings = new EmbeddingsApi(this.transport);
    this.recommendations = new RecommendationsApi(this.transport);
    this.catalogs = new CatalogsApi(this.transport);
    this.events = new EventsApi(this.transport);
    this.features = new FeaturesApi(this.transport);
    this.models = new ModelsApi(this.transport);
    this.usage = new UsageApi(this.transport);
    this.admin = new AdminApi(this.transport);
  }

  /** The service this client calls. */
  get baseUrl(): string {
    return this.transport.baseUrl;
  }

  /** `POST /v1/search`: ranked items of a catalog (retried: it only reads). */
  async search(body: T.SearchRequest, options?: ModelRequestOptions): Promise<T.SearchResponse> {
    return data(this.transport, { method: "POST", path: "/v1/search", body, retry: "idempotent" }, options);
  }

  /** Any call, with the answer's status and headers (`X-Model-Version`, `RateLimit`). */
  async request<R>(call: Call, options?: ModelRequestOptions): Promise<ApiResponse<R>> {
    return this.transport.request<R>(call, options);
  }
}

async function data<R>(transport: Transport, call: Call, options?: ModelRequestOptions): Promise<R> {
  return (await transport.request<R>(call, options)).data;
}

/** A path segment, escaped. `.` and `..` are refused: a URL keeps neither as a segment
 * (fetch resolves them, `%2E%2E` included), so the call would reach another route; so is
 * text with a lone surrogate, which no URL can carry. */
function seg(value: string): string {
  if (value === "") throw new TypeError("a path parameter is empty");
  if (value === "." || value === "..") throw new TypeError(`a path parameter is "${value}", which a URL cannot carry`);
  refuseLoneSurrogate("a path parameter", value);
  return encodeURIComponent(value);
}

function day(value: T.Day | undefined): string | undefined {
  if (value === undefined) return undefined;
  return value instanceof Date ? value.toISOString().slice(0, 10) : value;
}

class Resource {
  constructor(protected readonly transport: Transport) {}
}

/** `POST /v1/embeddings`. */
export class EmbeddingsApi extends Resource {
  /** Vectors for one text or a list (retried: it only reads), with `version`: the
   * model version that served them (`X-Model-Version`), which a traffic split may vary
   * from call to call. */
  async create(body: T.EmbeddingRequest, options?: ModelRequestOptions): Promise<T.EmbeddingResponse> {
    const call: Call = { method: "POST", path: "/v1/embeddings", body, retry: "idempotent" };
    const answer = await this.transport.request<T.EmbeddingResponse>(call, options);
    const embeddings = answer.data;
    const version = embeddings?.version ?? answer.modelVersion;
    if (version === undefined || typeof embeddings !== "object" || embeddings === null) return embeddings;
    return { ...embeddings, version };
  }
}

/** `POST /v1/recommendations`. */
export class RecommendationsApi extends Resource {
  /** Ranked items of a catalog for a user (retried: it only reads). */
  async create(body: T.RecommendationsRequest, options?: ModelRequestOptions): Promise<T.RecommendationsResponse> {
    const call: Call = { method: "POST", path: "/v1/recommendations", body, retry: "idempotent" };
    return data(this.transport, call, options);
  }
}

/** `/v1/catalogs`. */
export class CatalogsApi extends Resource {
  /** The tenant's catalogs with item counts and settings. */
  async list(options?: RequestOptions): Promise<T.CatalogList> {
    return data(this.transport, { method: "GET", path: "/v1/catalogs", retry: "idempotent" }, options);
  }

  /** Create a catalog or replace its settings. */
  async configure(catalog: string, settings: T.CatalogSettings = {}, options?: RequestOptions): Promise<T.Catalog> {
    const path = `/v1/catalogs/${seg(catalog)}`;
    return data(this.transport, { method: "PUT", path, body: settings, retry: "idempotent" }, options);
  }

  /** Insert or replace items (durable when answered; searchable within a second). */
  async upsertItems(catalog: string, items: T.CatalogItem[], options?: RequestOptions): Promise<T.UpsertResult> {
    const path = `/v1/catalogs/${seg(catalog)}/items`;
    return data(this.transport, { method: "PUT", path, body: { items }, retry: "idempotent" }, options);
  }

  /** One item as stored. */
  async getItem(catalog: string, itemId: string, options?: RequestOptions): Promise<T.StoredItem> {
    const path = `/v1/catalogs/${seg(catalog)}/items/${seg(itemId)}`;
    return data(this.transport, { method: "GET", path, retry: "idempotent" }, options);
  }

  /** Delete one item; one already gone throws `NotFoundError`, unless an earlier
   * attempt of this call, whose answer was lost, deleted it. */
  async deleteItem(catalog: string, itemId: string, options?: RequestOptions): Promise<T.DeletedItem> {
    const path = `/v1/catalogs/${seg(catalog)}/items/${seg(itemId)}`;
    const doneOn404 = (): T.DeletedItem => ({ id: itemId, deleted: true });
    return data(this.transport, { method: "DELETE", path, retry: "idempotent", doneOn404 }, options);
  }
}

/** `POST /v1/events`. */
export class EventsApi extends Resource {
  /**
   * Record interactions. The service stores a batch once per `idempotencyKey`
   * (`Idempotency-Key`; kept 24 h), else per the call's `X-Request-ID` (the same on
   * every attempt), and answers a repeat as it answered the first: so an attempt whose
   * answer was lost is resent like any other idempotent call. To resend a batch in a
   * later call (after an `APIConnectionError`, or from another process), give both
   * calls the same `idempotencyKey`; one key sent with another batch throws a
   * `BadRequestError` (`idempotency_key_reused`). When some events are bad the rest
   * are kept and this throws `InvalidEventsError` (its `result` says what was accepted).
   */
  async send(body: T.EventsRequest, options?: EventsRequestOptions): Promise<T.EventsResult> {
    const { idempotencyKey, ...rest } = options ?? {};
    const call: Call = { method: "POST", path: "/v1/events", body, retry: "idempotent", idempotencyKey };
    return data(this.transport, call, rest);
  }
}

/** `GET /v1/features/{entity}/{id}`. */
export class FeaturesApi extends Resource {
  /** A user's or an item's online features (defaults where no fresh row answers). */
  async get(entity: "user" | "item", id: string, options?: RequestOptions): Promise<T.Features> {
    const path = `/v1/features/${seg(entity)}/${seg(id)}`;
    return data(this.transport, { method: "GET", path, retry: "idempotent" }, options);
  }
}

/** `/v1/models`. */
export class ModelsApi extends Resource {
  /** Every served model with its versions and current weights. */
  async list(options?: RequestOptions): Promise<T.ModelList> {
    return data(this.transport, { method: "GET", path: "/v1/models", retry: "idempotent" }, options);
  }

  /** One model with rollout state (internals for admin keys). */
  async retrieve(name: string, options?: RequestOptions): Promise<T.ModelDetail> {
    return data(this.transport, { method: "GET", path: `/v1/models/${seg(name)}`, retry: "idempotent" }, options);
  }
}

/** `GET /v1/usage`. */
export class UsageApi extends Resource {
  /** Requests, texts and errors per model and UTC day (default: this month so far). */
  async get(range: T.UsageRange = {}, options?: RequestOptions): Promise<T.Usage> {
    const query = { start: day(range.start), end: day(range.end) };
    return data(this.transport, { method: "GET", path: "/v1/usage", query, retry: "idempotent" }, options);
  }
}

/** `/admin/v1`: the operator manages every tenant; an `admin`-scoped key its own. */
export class AdminApi extends Resource {
  readonly tenants: TenantsApi;
  readonly keys: KeysApi;
  /** What the dashboard shows (`/admin/v1/dashboard/...`). */
  readonly dashboard: DashboardApi;

  constructor(transport: Transport) {
    super(transport);
    this.tenants = new TenantsApi(transport);
    this.keys = new KeysApi(transport);
    this.dashboard = new DashboardApi(transport);
  }

  /** `GET /admin/v1/search/indexes`: each catalog's index completeness per version. */
  async searchIndexes(
    params: { stored?: string } = {},
    options?: RequestOptions,
  ): Promise<T.SearchIndexes> {
    const query = { stored: params.stored };
    return data(this.transport, { method: "GET", path: "/admin/v1/search/indexes", query, retry: "idempotent" }, options);
  }
}

/** `/admin/v1/tenants`. */
export class TenantsApi extends Resource {
  /** Every tenant (the operator), or the caller's own. */
  async list(options?: RequestOptions): Promise<T.Tenant[]> {
    return data(this.transport, { method: "GET", path: "/admin/v1/tenants", retry: "idempotent" }, options);
  }

  /** A new tenant (operator). Not resent after a lost answer. */
  async create(body: T.TenantCreate, options?: RequestOptions): Promise<T.Tenant> {
    return data(this.transport, { method: "POST", path: "/admin/v1/tenants", body, retry: "refusals" }, options);
  }

  /** One tenant. */
  async get(tenantId: string, options?: RequestOptions): Promise<T.Tenant> {
    return data(this.transport, { method: "GET", path: `/admin/v1/tenants/${seg(tenantId)}`, retry: "idempotent" }, options);
  }

  /** New limits, or disabled (operator). It sets values, so a resend is harmless. */
  async update(tenantId: string, body: T.TenantPatch, options?: RequestOptions): Promise<T.Tenant> {
    const path = `/admin/v1/tenants/${seg(tenantId)}`;
    return data(this.transport, { method: "PATCH", path, body, retry: "idempotent" }, options);
  }

  /** A tenant's usage per model and UTC day. */
  async usage(tenantId: string, range: T.UsageRange = {}, options?: RequestOptions): Promise<T.Usage> {
    const path = `/admin/v1/tenants/${seg(tenantId)}/usage`;
    const query = { start: day(range.start), end: day(range.end) };
    return data(this.transport, { method: "GET", path, query, retry: "idempotent" }, options);
  }
}

/** `/admin/v1/tenants/{id}/keys`. */
export class KeysApi extends Resource {
  /** Every key of a tenant, revoked and expired ones included (never the key). */
  async list(tenantId: string, options?: RequestOptions): Promise<T.ApiKey[]> {
    const path = `/admin/v1/tenants/${seg(tenantId)}/keys`;
    return data(this.transport, { method: "GET", path, retry: "idempotent" }, options);
  }

  /** A new key: `key` is in this answer only. Not resent after a lost answer. */
  async create(tenantId: string, body: T.KeyCreate = {}, options?: RequestOptions): Promise<T.ApiKeyCreated> {
    const path = `/admin/v1/tenants/${seg(tenantId)}/keys`;
    return data(this.transport, { method: "POST", path, body, retry: "refusals" }, options);
  }

  /** Revoke a key now. */
  async revoke(tenantId: string, keyId: string, options?: RequestOptions): Promise<T.ApiKey> {
    const path = `/admin/v1/tenants/${seg(tenantId)}/keys/${seg(keyId)}`;
    return data(this.transport, { method: "DELETE", path, retry: "idempotent" }, options);
  }

  /** A new key with the old one's rights; the old one expires after `overlap_s`. Not
   * resent after a lost answer. */
  async rotate(tenantId: string, keyId: string, body: T.KeyRotate = {}, options?: RequestOptions): Promise<T.ApiKeyCreated> {
    const path = `/admin/v1/tenants/${seg(tenantId)}/keys/${seg(keyId)}/rotate`;
    return data(this.transport, { method: "POST", path, body, retry: "refusals" }, options);
  }
}

/** `/admin/v1/dashboard`. */
export class DashboardApi extends Resource {
  /** Models with weights and rollout state, replicas, today's usage per tenant. */
  async state(options?: RequestOptions): Promise<T.DashboardState> {
    return data(this.transport, { method: "GET", path: "/admin/v1/dashboard/state", retry: "idempotent" }, options);
  }

  /** servekit's counters and histograms, summed over replicas and nodes. */
  async metrics(options?: RequestOptions): Promise<T.MetricsSnapshot> {
    return data(this.transport, { method: "GET", path: "/admin/v1/dashboard/metrics", retry: "idempotent" }, options);
  }
}
