/**
 * When to retry and how long to wait.
 *
 * servekit answers 429 (rate limit, quota) and 503 (overload, no live replica, an index
 * still being built, an event log that kept nothing) before it does a call's work, so
 * those are retried for every call, after `Retry-After` when the answer has one. A call
 * that got no answer may or may not have been done: it is retried only when doing it
 * twice is harmless (`"idempotent"`: reads, PUT, DELETE, PATCH, the POSTs that only
 * read, /v1/embeddings, /v1/search, /v1/recommendations, and /v1/events, whose batch the
 * service stores once per `Idempotency-Key`, else per `X-Request-ID`), or when the
 * connection was never made, so nothing was sent.
 */

/** `"idempotent"`: retry refusals and lost answers; `"refusals"`: retry only what the
 * service refused before doing anything (429, 503) and connections never made. */
export type RetryMode = "idempotent" | "refusals";

/** Statuses that are refusals before any work. */
export const RETRY_STATUSES: ReadonlySet<number> = new Set([429, 503]);

/** Connection failures where nothing reached the service. */
const NOT_SENT_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** How waiting between attempts works. */
export interface Backoff {
  /** First wait without `Retry-After`, doubled per retry (default 500). */
  initialDelayMs: number;
  /** Longest wait without `Retry-After` (default 8000). */
  maxDelayMs: number;
  /** A `Retry-After` longer than this is not waited for: the error is thrown (default 60). */
  maxRetryAfterS: number;
}

export const DEFAULT_BACKOFF: Backoff = {
  initialDelayMs: 500,
  maxDelayMs: 8000,
  maxRetryAfterS: 60,
};

/**
 * Milliseconds to wait before retry number `retry` (0 for the first), or `undefined`
 * when the service asked for a longer wait than `backoff.maxRetryAfterS`.
 *
 * With `Retry-After`: that long, plus up to 10% so that callers refused together do not
 * come back together. Without: exponential from `initialDelayMs`, capped at
 * `maxDelayMs`, with "equal jitter" (half fixed, half random).
 */
export function retryDelayMs(
  retry: number,
  retryAfterS: number | undefined,
  backoff: Backoff,
  random: () => number = Math.random,
): number | undefined {
  if (retryAfterS !== undefined) {
    if (retryAfterS > backoff.maxRetryAfterS) return undefined;
    const ms = retryAfterS * 1000;
    return ms + random() * 0.1 * ms;
  }
  const cap = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** retry);
  return cap / 2 + (random() * cap) / 2;
}

/** Whether a failed fetch never reached the service (so even a POST may be resent). */
export function neverSent(error: unknown): boolean {
  for (const code of errorCodes(error)) {
    if (NOT_SENT_CODES.has(code)) return true;
  }
  return false;
}

/** The `code`s of a fetch failure and its causes (undici nests them, and puts the
 * per-address failures of one connection attempt in an AggregateError). */
function errorCodes(error: unknown, depth = 0): string[] {
  if (typeof error !== "object" || error === null || depth > 4) return [];
  const found: string[] = [];
  const { code, cause, errors } = error as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === "string") found.push(code);
  found.push(...errorCodes(cause, depth + 1));
  if (Array.isArray(errors)) {
    for (const inner of errors) found.push(...errorCodes(inner, depth + 1));
  }
  return found;
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
