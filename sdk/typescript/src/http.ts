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
   * `http://127.0.0.1:8000` (what `make serve` listens on). An empty one is unset; one
   * that is not an http(s) URL with a host throws a `ServekitError` here. */
  baseUrl?: string;
  /** A tenant API key (`sk-...`) or the operator credential; default:
   * `SERVEKIT_API_KEY`. `null`: send none (a service with auth off). Outer whitespace
   * is dropped; one with a space, a control or a non-ASCII character inside throws a
   * `ServekitError` here (which never shows the key). */
  apiKey?: string | null;
  /** Time allowed for one attempt, answer body included (default 30000). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 2); 0 turns retrying off. */
  maxRetries?: number;
  /** Waiting between attempts. */
  backoff?: Partial<Backoff>;
  /** Headers sent with every call (checked here: names are tokens, values visible
   * ASCII and inner spaces). */
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
  /** Sent as `X-Request-ID` (the same on every attempt); default: a fresh one. Give
   * each call its own: the service stores an event batch once per request id (when it
   * has no `idempotencyKey`), so a second `events.send` of the same events under the
   * same id is answered as a repeat and stores nothing. */
  requestId?: string;
}

/** Options of a call that runs a model (embeddings, search, recommendations). Like
 * every value sent as a header, each must be visible ASCII (inner spaces allowed): one
 * that is not throws a `TypeError` naming the option before anything is sent. */
export interface ModelRequestOptions extends RequestOptions {
  /** Pin a version (`X-Model-Version`; the key needs the right to pin). */
  version?: string;
  /** Sticky A/B (`X-Routing-Key`): the same key gets the same version. Hash or
   * percent-encode one that is not ASCII (a name, say). */
  routingKey?: string;
}

/** Options of `events.send`. */
export interface EventsRequestOptions extends RequestOptions {
  /** Sent as `Idempotency-Key` (1 to 128 visible ASCII characters): the service stores
   * a batch once per key for 24 h, so a later call resending the batch with the same
   * key stores nothing more. Default: none (the call's `X-Request-ID` keys its own
   * attempts). */
  idempotencyKey?: string;
}

/** The longest `Idempotency-Key` the service keeps. */
export const MAX_IDEMPOTENCY_KEY = 128;

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
  /** The answer when a repeat sent after an attempt that may have acted (its answer
   * lost, or a proxy's 503) gets servekit's own 404 naming the missing resource
   * (`item: no such item in this catalog`; not a proxy's page, nor `no such route`): a
   * delete that the earlier attempt already did. */
  doneOn404?: () => unknown;
  /** Sent as `Idempotency-Key` (events). */
  idempotencyKey?: string | undefined;
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
    this.baseUrl = baseUrlOf(options.baseUrl, vars["SERVEKIT_URL"]);
    this.#apiKey = apiKeyOf(options.apiKey, vars["SERVEKIT_API_KEY"]);
    this.timeoutMs = nonNegative("timeoutMs", options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.maxRetries = nonNegative("maxRetries", options.maxRetries ?? DEFAULT_MAX_RETRIES);
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.headers = checkedHeaders("headers", options.headers, (message) => new ServekitError(message));
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
    let lost = false; // an attempt may have acted: its answer did not come, or a proxy's 503
    for (let retry = 0; ; retry++) {
      let error: ServekitError;
      let retryable: boolean;
      let retryAfterS: number | undefined;
      try {
        const answer = await this.attempt(url, init, timeoutMs, requestId, options.signal);
        this.checkDeprecation(call, answer.response.headers);
        if (answer.response.ok) return answered<T>(answer, requestId);
        const failed = errorOf(answer, requestId);
        if (lost && call.doneOn404 !== undefined && resourceMissing(failed)) {
          return { ...answered<T>({ ...answer, text: "" }, requestId), data: call.doneOn404() as T, status: 200 };
        }
        lost = lost || maybeActed(failed);
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
      if (value === undefined) continue;
      refuseLoneSurrogate(name, value);
      query.set(name, value);
    }
    const search = query.toString();
    return `${this.baseUrl}${call.path}${search ? `?${search}` : ""}`;
  }

  /** The call's headers; a value HTTP cannot carry as is throws a `TypeError` naming
   * its option before anything is sent (fetch would refuse some, send others as
   * latin-1). */
  private headersOf(call: Call, options: ModelRequestOptions, requestId: string): Record<string, string> {
    const invalid = (message: string): Error => new TypeError(message);
    const headers: Record<string, string> = { Accept: "application/json", ...this.headers };
    if (this.#apiKey !== null) headers["Authorization"] = `Bearer ${this.#apiKey}`;
    if (call.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.version !== undefined) {
      headers["X-Model-Version"] = headerValue("version", "X-Model-Version", options.version, invalid);
    }
    if (options.routingKey !== undefined) {
      headers["X-Routing-Key"] = headerValue("routingKey", "X-Routing-Key", options.routingKey, invalid);
    }
    if (call.idempotencyKey !== undefined) {
      const key = headerValue("idempotencyKey", "Idempotency-Key", call.idempotencyKey, invalid);
      if (key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY) {
        throw invalid(`idempotencyKey: must be 1 to ${MAX_IDEMPOTENCY_KEY} characters, has ${key.length}`);
      }
      headers["Idempotency-Key"] = key;
    }
    headers["X-Request-ID"] = headerValue("requestId", "X-Request-ID", requestId, invalid);
    return { ...headers, ...checkedHeaders("headers", options.headers, invalid) };
  }

  /** `text` without the credential: the key itself and any `Bearer <token>`. */
  private redact(text: string): string {
    return redact(text, this.#apiKey);
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
      // The platform's error may echo a header value: never the key, in the message or
      // in a `cause` that console.log would print.
      const shown = mentions(e, (text) => this.redact(text) !== text) ? undefined : { cause: e };
      throw new APIConnectionError(`connection failed: ${this.redact(describe(e))}`, requestId, shown);
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

/** Whether an error answer may be tried again: 429 always (refused before anything was
 * done); 503 on calls that may repeat, and on the others only when servekit itself said
 * so (its error envelope): a proxy's 503 may come after it passed the request on. */
function retryableAnswer(failed: APIError, mode: RetryMode): boolean {
  if (!RETRY_STATUSES.has(failed.status)) return false;
  if (failed.status !== 503 || mode === "idempotent") return true;
  return fromTheService(failed);
}

/** Whether servekit itself gave the error answer (its error envelope, whose code
 * `errorOf` keeps; any other answer's code is `http_<status>`). */
function fromTheService(failed: APIError): boolean {
  return !failed.code.startsWith("http_");
}

/** Whether the request of an error answer may have been acted on all the same: a 503
 * that is not servekit's (a proxy may answer it after passing the request on). */
function maybeActed(failed: APIError): boolean {
  return failed.status === 503 && !fromTheService(failed);
}

/** Whether an error answer is servekit's own 404 `not_found` naming the missing
 * resource (`item: no such item in this catalog`): not a proxy's page, nor servekit's
 * `no such route`, which names no field. */
function resourceMissing(failed: APIError): boolean {
  return failed.status === 404 && failed.code === "not_found" && failed.field !== undefined;
}

/** The `APIError` for an error answer: servekit's `{"error": {code, message,
 * request_id}}`, the inference protocol's `{"error": "..."}`, or anything else. */
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

/** The JSON body. NaN and the infinities, which `JSON.stringify` would turn into
 * `null`, an invalid `Date` (sent as `null` too) and text with a lone surrogate throw a
 * `TypeError` naming where they are. */
function bodyOf(call: Call): string | undefined {
  if (call.body === undefined) return undefined;
  refuseUnsendable(call.body, "", new Set());
  return JSON.stringify(call.body);
}

function refuseUnsendable(value: unknown, where: string, seen: Set<object>): void {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new TypeError(`${where}: ${String(value)} cannot be sent (JSON has no such number)`);
  }
  if (typeof value === "string") refuseLoneSurrogate(where, value);
  if (value instanceof Date && Number.isNaN(value.getTime())) {
    // `JSON.stringify` sends it as null: an event's time would become "when received".
    throw new TypeError(`${where}: an invalid Date cannot be sent (JSON has no such time)`);
  }
  if (typeof value !== "object" || value === null || seen.has(value)) return;
  const proto = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return; // a Date, say: its toJSON
  seen.add(value);
  for (const [key, inner] of Object.entries(value)) {
    if (!Array.isArray(value)) refuseLoneSurrogate(where === "" ? "body" : where, key, "a key ");
    refuseUnsendable(inner, where === "" ? key : `${where}.${key}`, seen);
  }
}

/** Unpaired UTF-16 surrogates: what a string cut between the two halves of an emoji
 * holds. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Text with a lone surrogate is not Unicode text: `JSON.stringify` sends it escaped
 * (the service refuses it), a URL cannot carry it at all. A `TypeError` naming where,
 * never showing the text. */
export function refuseLoneSurrogate(where: string, text: string, subject = ""): void {
  if (LONE_SURROGATE.test(text)) {
    throw new TypeError(`${where}: ${subject}has a lone surrogate, which is not Unicode text and cannot be sent`);
  }
}

/** The service's address: `""` is unset; else an http(s) URL with a host, or a
 * `ServekitError` naming where it came from (not the value: it may carry credentials). */
function baseUrlOf(option: string | undefined, fromEnv: string | undefined): string {
  const source = option ? "baseUrl" : "SERVEKIT_URL";
  const url = (option || fromEnv || DEFAULT_BASE_URL).trim().replace(/\/+$/, "");
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  const http = parsed !== undefined && (parsed.protocol === "http:" || parsed.protocol === "https:");
  if (!http || parsed?.hostname === "" || !/^https?:\/\//.test(url)) {
    throw new ServekitError(`${source}: must be an http:// or https:// URL with a host`);
  }
  return url;
}

/** The API key to send (null: none). Outer whitespace is dropped; one that an HTTP
 * header cannot carry is refused without showing it. */
function apiKeyOf(option: string | null | undefined, fromEnv: string | undefined): string | null {
  if (option === null) return null;
  const source = option === undefined ? "SERVEKIT_API_KEY" : "apiKey";
  const key = option === undefined ? fromEnv : option;
  if (key !== undefined && typeof key !== "string") throw new ServekitError("apiKey: must be a string or null");
  if (key === undefined || key.trim() === "") {
    throw new ServekitError("no API key: pass `apiKey` or set SERVEKIT_API_KEY (apiKey: null sends none)");
  }
  if (!/^[\x21-\x7e]+$/.test(key.trim())) {
    throw new ServekitError(
      `${source}: has a space, a control character or a non-ASCII character inside; an API key is visible ASCII (the key is not shown)`,
    );
  }
  return key.trim();
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** `value`, when the `header` it is sent as carries it unchanged: visible ASCII and
 * inner spaces (HTTP drops outer ones; fetch refuses some characters and sends others
 * as latin-1). Refused naming the option, never showing the value. */
function headerValue(name: string, header: string, value: unknown, invalid: (message: string) => Error): string {
  if (typeof value !== "string") throw invalid(`${name}: must be a string`);
  const bad = value.search(/[^\x20-\x7e]/);
  if (bad >= 0) {
    throw invalid(
      `${name}: cannot be sent as the ${header} header: the character at index ${bad} is not visible ASCII (hash or percent-encode such a value)`,
    );
  }
  if (value !== value.replace(/^ +| +$/g, "")) {
    throw invalid(`${name}: cannot be sent as the ${header} header: it begins or ends with a space, which HTTP drops`);
  }
  return value;
}

/** Headers of an option, each name a token and each value one `headerValue` takes. */
function checkedHeaders(
  option: string,
  headers: Record<string, string> | undefined,
  invalid: (message: string) => Error,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (!TOKEN.test(name)) throw invalid(`${option}: a header name is not an HTTP token`);
    out[name] = headerValue(`${option}[${JSON.stringify(name)}]`, name, value, invalid);
  }
  return out;
}

const BEARER = /\bbearer\s+[^\s'",)]+/gi;

/** `text` without the credential: `secret` itself and any `Bearer <token>`. */
function redact(text: string, secret: string | null): string {
  const without = secret === null || secret === "" ? text : text.split(secret).join("[redacted]");
  return without.replace(BEARER, "Bearer [redacted]");
}

/** Whether an error, its causes or the errors it aggregates have a message `test`
 * finds something in. */
function mentions(error: unknown, test: (text: string) => boolean, depth = 0): boolean {
  if (typeof error !== "object" || error === null || depth > 4) return false;
  const { message, cause, errors } = error as { message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof message === "string" && test(message)) return true;
  if (mentions(cause, test, depth + 1)) return true;
  return Array.isArray(errors) && errors.some((inner) => mentions(inner, test, depth + 1));
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
