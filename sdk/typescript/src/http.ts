/**
 * One call to the service: URL, headers, a timeout per attempt (an `AbortSignal`),
 * retries as `retry.ts` decides, and every error answer turned into an `APIError`.
 */

import { APIConnectionError, APIError, APITimeoutError, ServekitError } from "./errors.js";
import { type Backoff, DEFAULT_BACKOFF, neverSent, RETRY_STATUSES, type RetryMode, retryDelayMs, sleep } from "./retry.js";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8000";
export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_RETRIES = 2;

/** How a client is set up; every field is optional. */
export interface ClientOptions {
  /** The service, e.g. `https://api.example.com`; default: `SERVEKIT_URL`, else
   * `http://127.0.0.1:8000` (what `make serve` listens on). */
  baseUrl?: string;
  /** A tenant API key (`sk-...`) or the operator credential; default:
   * `SERVEKIT_API_KEY`. `null`: send none (a service with auth off). */
  apiKey?: string | null;
  /** Time allowed for one attempt, answer body included (default 30000). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 2); 0 turns retrying off. */
  maxRetries?: number;
  /** Waiting between attempts. */
  backoff?: Partial<Backoff>;
  /** Headers sent with every call. */
  headers?: Record<string, string>;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof globalThis.fetch;
  /** Told before each retry (for logs and metrics). */
  onRetry?: (retry: RetryInfo) => void;
  /** Told when the service answers with `Deprecation` (RFC 9745); default: one
   * `console.warn` per method and path. */
  onDeprecated?: (notice: DeprecationNotice) => void;
}

/** A route the service marked deprecated, with its `Sunset` (RFC 8594) and links. */
export interface DeprecationNotice {
  method: string;
  path: string;
  /** The `Deprecation` header (`@<Unix seconds>`: since when). */
  deprecation: string;
  /** The `Sunset` header (an HTTP date), when the service gave one. */
  sunset: string | undefined;
  /** The `Link` header (the deprecation's documentation), when given. */
  link: string | undefined;
}

/** Options of one call. */
export interface RequestOptions {
  /** Aborts the call, retries and waits included; the call then rejects with the
   * signal's reason. */
  signal?: AbortSignal;
  /** Overrides the client's `timeoutMs` for this call. */
  timeoutMs?: number;
  /** Overrides the client's `maxRetries` for this call. */
  maxRetries?: number;
  /** Extra headers for this call. */
  headers?: Record<string, string>;
  /** Sent as `X-Request-ID` (the same on every attempt); default: a fresh one. */
  requestId?: string;
}

/** Options of a call that runs a model (embeddings, search, recommendations). */
export interface ModelRequestOptions extends RequestOptions {
  /** Pin a version (`X-Model-Version`; the key needs the right to pin). */
  version?: string;
  /** Sticky A/B (`X-Routing-Key`): the same key gets the same version. */
  routingKey?: string;
}

/** What `onRetry` is told. */
export interface RetryInfo {
  method: string;
  path: string;
  requestId: string;
  /** 1 for the first retry. */
  retry: number;
  /** How long the client waits before it. */
  delayMs: number;
  /** Why: the refused attempt's error (an `APIError` or an `APIConnectionError`). */
  error: ServekitError;
}

/** A successful answer with what its headers said. */
export interface ApiResponse<T> {
  data: T;
  status: number;
  headers: Headers;
  /** The request id the service logged the call under. */
  requestId: string;
  /** `X-Model-Version`: the version that served the call, when a model ran. */
  modelVersion: string | undefined;
}

/** One call as the client methods describe it. */
export interface Call {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: string;
  query?: Record<string, string | undefined>;
  body?: unknown;
  retry: RetryMode;
  /** The answer when a repeat sent after a lost answer finds nothing (404): a delete
   * that the lost attempt already did. */
  doneOn404?: () => unknown;
}

type Env = Record<string, string | undefined>;

function env(): Env {
  const proc = (globalThis as { process?: { env?: Env } }).process;
  return proc?.env ?? {};
}

/** Sends calls to one service. */
export class Transport {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly backoff: Backoff;
  readonly #apiKey: string | null; // a private field: never shown by console.log or JSON.stringify
  private readonly headers: Record<string, string>;
  private readonly fetch: typeof globalThis.fetch;
  private readonly onRetry: ((retry: RetryInfo) => void) | undefined;
  private readonly onDeprecated: (notice: DeprecationNotice) => void;
  private readonly warned = new Set<string>();

  constructor(options: ClientOptions = {}) {
    const vars = env();
    this.baseUrl = (options.baseUrl ?? vars["SERVEKIT_URL"] ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    const key = options.apiKey === undefined ? vars["SERVEKIT_API_KEY"] : options.apiKey;
    if (key === undefined || key === "") {
      throw new ServekitError("no API key: pass `apiKey` or set SERVEKIT_API_KEY (apiKey: null sends none)");
    }
    this.#apiKey = key;
    this.timeoutMs = nonNegative("timeoutMs", options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.maxRetries = nonNegative("maxRetries", options.maxRetries ?? DEFAULT_MAX_RETRIES);
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.headers = { ...options.headers };
    const platformFetch = (globalThis as { fetch?: typeof globalThis.fetch }).fetch;
    const chosen = options.fetch ?? platformFetch;
    if (chosen === undefined) throw new ServekitError("no fetch: pass `fetch` (this platform has none)");
    this.fetch = chosen;
    this.onRetry = options.onRetry;
    this.onDeprecated = options.onDeprecated ?? ((notice) => this.warnOnce(notice));
  }

  /** Send one call, retrying as its mode allows; its parsed answer. */
  async request<T>(call: Call, options: ModelRequestOptions = {}): Promise<ApiResponse<T>> {
    const requestId = options.requestId ?? freshId();
    const maxRetries = nonNegative("maxRetries", options.maxRetries ?? this.maxRetries);
    const timeoutMs = nonNegative("timeoutMs", options.timeoutMs ?? this.timeoutMs);
    const url = this.url(call);
    const init = { method: call.method, headers: this.headersOf(call, options, requestId), body: bodyOf(call) };
    let lost = false; // an attempt may have reached the service; its answer did not come
    for (let retry = 0; ; retry++) {
      let error: ServekitError;
      let retryable: boolean;
      let retryAfterS: number | undefined;
      try {
        const answer = await this.attempt(url, init, timeoutMs, requestId, options.signal);
        this.checkDeprecation(call, answer.response.headers);
        if (answer.response.ok) return answered<T>(answer, requestId);
        if (lost && call.doneOn404 !== undefined && answer.response.status === 404) {
          return { ...answered<T>({ ...answer, text: "" }, requestId), data: call.doneOn404() as T, status: 200 };
        }
        const failed = errorOf(answer, requestId);
        error = failed;
        retryable = retryableAnswer(failed, call.retry);
        retryAfterS = failed.retryAfterS;
      } catch (e) {
        if (options.signal?.aborted) throw options.signal.reason;
        if (!(e instanceof APIConnectionError)) throw e;
        error = e;
        retryable = call.retry === "idempotent" || neverSent(e.cause);
        lost = lost || !neverSent(e.cause);
      }
      const delayMs = retryable && retry < maxRetries ? retryDelayMs(retry, retryAfterS, this.backoff) : undefined;
      if (delayMs === undefined) throw error;
      this.onRetry?.({ method: call.method, path: call.path, requestId, retry: retry + 1, delayMs, error });
      await sleep(delayMs, options.signal);
    }
  }

  private checkDeprecation(call: Call, headers: Headers): void {
    const deprecation = headers.get("deprecation");
    if (deprecation === null) return;
    const sunset = headers.get("sunset") ?? undefined;
    const link = headers.get("link") ?? undefined;
    this.onDeprecated({ method: call.method, path: call.path, deprecation, sunset, link });
  }

  private warnOnce(notice: DeprecationNotice): void {
    const route = `${notice.method} ${notice.path}`;
    if (this.warned.has(route)) return;
    this.warned.add(route);
    const until = notice.sunset === undefined ? "" : `; it stops answering after ${notice.sunset}`;
    console.warn(`servekit: ${route} is deprecated${until}${notice.link === undefined ? "" : ` (${notice.link})`}`);
  }

  private url(call: Call): string {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined) query.set(name, value);
    }
    const search = query.toString();
    return `${this.baseUrl}${call.path}${search ? `?${search}` : ""}`;
  }

  private headersOf(call: Call, options: ModelRequestOptions, requestId: string): Record<string, string> {
    const headers: Record<string, string> = { Accept: "application/json", ...this.headers };
    if (this.#apiKey !== null) headers["Authorization"] = `Bearer ${this.#apiKey}`;
    if (call.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.version !== undefined) headers["X-Model-Version"] = options.version;
    if (options.routingKey !== undefined) headers["X-Routing-Key"] = options.routingKey;
    headers["X-Request-ID"] = requestId;
    return { ...headers, ...options.headers };
  }

  /** One attempt: the answer and its whole body, or an `APIConnectionError`. */
  private async attempt(
    url: string,
    init: RequestInit,
    timeoutMs: number,
    requestId: string,
    signal?: AbortSignal,
  ): Promise<Answer> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new DOMException("timed out", "TimeoutError")), timeoutMs);
    const unlink = link(signal, timeout);
    try {
      const response = await this.fetch(url, { ...init, signal: timeout.signal });
      const text = await response.text();
      return { response, text };
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (timeout.signal.aborted) {
        throw new APITimeoutError(`no answer within ${timeoutMs} ms`, requestId, { cause: e });
      }
      throw new APIConnectionError(`connection failed: ${describe(e)}`, requestId, { cause: e });
    } finally {
      clearTimeout(timer);
      unlink();
    }
  }
}

interface Answer {
  response: Response;
  text: string;
}

function answered<T>({ response, text }: Answer, sentId: string): ApiResponse<T> {
  let data: unknown = undefined;
  if (text !== "") {
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw new ServekitError(`the answer (${response.status}) is not JSON`, { cause: e });
    }
  }
  return {
    data: data as T,
    status: response.status,
    headers: response.headers,
    requestId: response.headers.get("x-request-id") ?? sentId,
    modelVersion: response.headers.get("x-model-version") ?? undefined,
  };
}

/** The `APIError` for an error answer: servekit's `{"error": {code, message,
 * request_id}}`, the inference protocol's `{"error": "..."}`, or anything else. */
/** Whether an error answer may be tried again: 429 always (refused before anything was
 * done); 503 on calls that may repeat, and on the others only when servekit itself said
 * so (its error envelope): a proxy's 503 may come after it passed the request on. */
function retryableAnswer(failed: APIError, mode: RetryMode): boolean {
  if (!RETRY_STATUSES.has(failed.status)) return false;
  if (failed.status !== 503 || mode === "idempotent") return true;
  return !failed.code.startsWith("http_");
}

function errorOf({ response, text }: Answer, sentId: string): APIError {
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (a proxy's page): keep the text
  }
  const error = (body as { error?: unknown } | null)?.error;
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  let requestId = response.headers.get("x-request-id") ?? sentId;
  if (typeof error === "object" && error !== null) {
    const fields = error as { code?: unknown; message?: unknown; request_id?: unknown };
    if (typeof fields.code === "string") code = fields.code;
    if (typeof fields.message === "string") message = fields.message;
    if (typeof fields.request_id === "string") requestId = fields.request_id;
  } else if (typeof error === "string") {
    message = error;
  } else if (typeof body === "string" && body.trim() !== "") {
    message = body.trim().slice(0, 200);
  }
  return APIError.from({ status: response.status, code, message, requestId, headers: response.headers, body });
}

function bodyOf(call: Call): string | undefined {
  return call.body === undefined ? undefined : JSON.stringify(call.body);
}

/** Abort `target` when `signal` aborts; returns the unlinker. */
function link(signal: AbortSignal | undefined, target: AbortController): () => void {
  if (signal === undefined) return () => {};
  if (signal.aborted) {
    target.abort(signal.reason);
    return () => {};
  }
  const onAbort = (): void => target.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

function describe(error: unknown): string {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  if (typeof cause?.code === "string") return cause.code;
  if (typeof cause?.message === "string" && cause.message !== "") return cause.message;
  return error instanceof Error ? error.message : String(error);
}

function freshId(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (crypto?.randomUUID !== undefined) return crypto.randomUUID().replaceAll("-", "");
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

function nonNegative(name: string, value: number): number {
  if (!Number.isFinite(value) || value < 0) throw new ServekitError(`${name}: must be a number >= 0`);
  return value;
}
