/**
 * servekit's TypeScript client: `new ServekitClient()` reads `SERVEKIT_API_KEY` (and
 * `SERVEKIT_URL`), then every `/v1` route and the admin API are methods.
 */

export * from "./client.js";
export * from "./errors.js";
export type * from "./types.js";
export {
  type ApiResponse,
  type Call,
  type ClientOptions,
  DEFAULT_BASE_URL,
  DEFAULT_MAX_RETRIES,
  DEFAULT_TIMEOUT_MS,
  type DeprecationNotice,
  type EventsRequestOptions,
  MAX_IDEMPOTENCY_KEY,
  type ModelRequestOptions,
  type RequestOptions,
  type RetryInfo,
} from "./http.js";
export { type Backoff, DEFAULT_BACKOFF, type RetryMode, retryDelayMs } from "./retry.js";
