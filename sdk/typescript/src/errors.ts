/**
 * Errors the client throws. Every answer of the service outside 2xx becomes an
 * `APIError` (a subclass per status) carrying the status, servekit's error `code`, its
 * `message` and the `requestId` to quote when asking about it; a request that got no
 * answer becomes an `APIConnectionError` (`APITimeoutError` when it ran out of time).
 */

import type { EventsResult } from "./types.js";

/** Base of every error this package throws. */
export class ServekitError extends Error {
  override name = "ServekitError";
}

/** What an error answer said, as `APIError.from` reads it. */
export interface ErrorFields {
  status: number;
  code: string;
  message: string;
  requestId: string | undefined;
  headers: Headers;
  body: unknown;
}

/** The service answered with an error status. */
export class APIError extends ServekitError {
  override name = "APIError";
  /** The HTTP status. */
  readonly status: number;
  /** servekit's error code (`invalid_request`, `rate_limited`, ...), or `http_<status>`
   * when the answer was not servekit's error shape (a proxy's, say). */
  readonly code: string;
  /** The request field, parameter or header servekit's message names first
   * (`items.0.attributes.price`, `header.x-routing-key`, `events.1.type`); undefined
   * when it names none, or when the answer is not servekit's. */
  readonly field: string | undefined;
  /** The request id the service logged the call under. */
  readonly requestId: string | undefined;
  /** The response's headers. */
  readonly headers: Headers;
  /** The parsed JSON body (or its text when it was not JSON). */
  readonly body: unknown;

  constructor(fields: ErrorFields) {
    super(fields.message);
    this.status = fields.status;
    this.code = fields.code;
    this.field = fields.code.startsWith("http_") ? undefined : fieldNamed(fields.message);
    this.requestId = fields.requestId;
    this.headers = fields.headers;
    this.body = fields.body;
  }

  /** Seconds the service asked to wait before a retry (`Retry-After`), if it said. */
  get retryAfterS(): number | undefined {
    return parseRetryAfter(this.headers.get("retry-after"));
  }

  /** The error class for an answer's status and code. */
  static from(fields: ErrorFields): APIError {
    if (fields.code === "invalid_events") return new InvalidEventsError(fields);
    const make = BY_STATUS[fields.status];
    if (make !== undefined) return new make(fields);
    if (fields.status >= 500) return new InternalServerError(fields);
    return new APIError(fields);
  }
}

/** 400: the request is malformed or breaks a limit; the message names the field. */
export class BadRequestError extends APIError {
  override name = "BadRequestError";
}

/** 400 `invalid_events`: some events of a batch were refused, the rest were kept
 * (`result.accepted`); `result.errors` names each refused one by index and field. */
export class InvalidEventsError extends BadRequestError {
  override name = "InvalidEventsError";

  /** What the batch did, as a successful answer would have said it. */
  get result(): EventsResult {
    const { error: _error, ...rest } = this.body as { error: unknown } & EventsResult;
    return rest;
  }
}

/** 401: no API key, or one that is unknown, expired or revoked. */
export class AuthenticationError extends APIError {
  override name = "AuthenticationError";
}

/** 403: the key may not do this (scope, model or pin). */
export class PermissionDeniedError extends APIError {
  override name = "PermissionDeniedError";
}

/** 404: no such model, version, catalog, item, tenant, key or route. */
export class NotFoundError extends APIError {
  override name = "NotFoundError";
}

/** 405: the route exists, not with this method. */
export class MethodNotAllowedError extends APIError {
  override name = "MethodNotAllowedError";
}

/** 409: the request conflicts with the current state. */
export class ConflictError extends APIError {
  override name = "ConflictError";
}

/** 413: the body is larger than the service's limit. */
export class PayloadTooLargeError extends APIError {
  override name = "PayloadTooLargeError";
}

/** 422: a path or query parameter the service could not read. */
export class UnprocessableEntityError extends APIError {
  override name = "UnprocessableEntityError";
}

/** 429: over a rate limit or the monthly quota; `retryAfterS` says when to retry. */
export class RateLimitError extends APIError {
  override name = "RateLimitError";
}

/** 5xx: the service failed; the message carries the request id. */
export class InternalServerError extends APIError {
  override name = "InternalServerError";
}

/** 503: overloaded, no live replica, or an index still being built; `retryAfterS`. */
export class ServiceUnavailableError extends InternalServerError {
  override name = "ServiceUnavailableError";
}

/** 504: the model call did not finish within the service's request timeout. */
export class GatewayTimeoutError extends InternalServerError {
  override name = "GatewayTimeoutError";
}

const BY_STATUS: Record<number, new (fields: ErrorFields) => APIError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  405: MethodNotAllowedError,
  409: ConflictError,
  413: PayloadTooLargeError,
  422: UnprocessableEntityError,
  429: RateLimitError,
  503: ServiceUnavailableError,
  504: GatewayTimeoutError,
};

/** No answer came back: the connection failed or broke. `cause` is the platform's
 * error. */
export class APIConnectionError extends ServekitError {
  override name = "APIConnectionError";
  /** The request id that was sent. */
  readonly requestId: string;

  constructor(message: string, requestId: string, options?: { cause?: unknown }) {
    super(message, options);
    this.requestId = requestId;
  }
}

/** No answer within the timeout. */
export class APITimeoutError extends APIConnectionError {
  override name = "APITimeoutError";
}

/** servekit's messages name the field first (`item: no such item in this catalog`); a
 * route it does not have names none (`no such route`). */
const NAMES_A_FIELD = /^([A-Za-z_][\w.-]*): /;

/** The field, parameter or header a servekit message names first; undefined when it
 * names none. */
function fieldNamed(message: string): string | undefined {
  return NAMES_A_FIELD.exec(message)?.[1];
}

/** `Retry-After` in seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3). */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, (at - now) / 1000);
}
