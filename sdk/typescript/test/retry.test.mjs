// Retries, timeouts and error answers the live service cannot be made to give on demand
// (a dropped connection, a proxy's page, a refusal that asks for an hour), against a
// local HTTP server that misbehaves on purpose. The service's own answers are tested
// in service.test.mjs.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, describe, test } from "node:test";

import {
  APIConnectionError,
  APIError,
  APITimeoutError,
  AuthenticationError,
  InternalServerError,
  NotFoundError,
  parseRetryAfter,
  RateLimitError,
  retryDelayMs,
  ServekitClient,
  ServekitError,
  ServiceUnavailableError,
} from "@servekit/client";

/** A server answering each request with the next of `script`'s steps (the last one
 * repeats); records what it received. */
async function scripted(script) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      const step = script[Math.min(seen.length - 1, script.length - 1)];
      step(req, res);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    seen,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

const json = (status, body, headers = {}) => (req, res) => {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
};
const refuse = (status, retryAfter) =>
  json(status, { error: { code: status === 429 ? "rate_limited" : "overloaded", message: "later", request_id: "rid-1" } },
    retryAfter === undefined ? {} : { "retry-after": retryAfter });
const drop = (req, res) => req.socket.destroy(); // the request arrived; no answer comes back
const hang = () => {}; // never answers
const ok = json(200, { object: "search.result", data: [] });

function client(url, extra = {}) {
  const retries = [];
  const made = new ServekitClient({
    baseUrl: url,
    apiKey: "sk-test",
    backoff: { initialDelayMs: 1, maxDelayMs: 4 },
    onRetry: (info) => retries.push(info),
    ...extra,
  });
  return { client: made, retries };
}

const SEARCH = { catalog: "c", query: "q" };
const EVENTS = { events: [{ user: "u", item: "i", type: "click" }] };

describe("retries", () => {
  let servers = [];
  const serve = async (script) => {
    const server = await scripted(script);
    servers.push(server);
    return server;
  };
  after(async () => {
    await Promise.all(servers.map((s) => s.close()));
  });

  test("503 and 429 are retried after Retry-After, with the same request id", async () => {
    const server = await serve([refuse(503, "0"), refuse(429, "0"), ok]);
    const { client: c, retries } = client(server.url);
    const found = await c.search(SEARCH, { requestId: "my-id" });
    assert.deepEqual(found.data, []);
    assert.equal(server.seen.length, 3);
    assert.deepEqual(retries.map((r) => r.error.status), [503, 429]);
    assert.deepEqual(retries.map((r) => r.delayMs), [0, 0]); // Retry-After: 0, honoured
    assert.deepEqual(new Set(server.seen.map((s) => s.headers["x-request-id"])), new Set(["my-id"]));
    assert.equal(server.seen[0].headers.authorization, "Bearer sk-test");
  });

  test("a Retry-After in seconds is waited for, plus at most 10%", async () => {
    const server = await serve([refuse(503, "1"), ok]);
    const { client: c, retries } = client(server.url);
    await c.search(SEARCH);
    assert.equal(retries.length, 1);
    assert.ok(retries[0].delayMs >= 1000 && retries[0].delayMs <= 1100, String(retries[0].delayMs));
  });

  test("a refusal asking for longer than maxRetryAfterS is thrown at once", async () => {
    const server = await serve([refuse(429, "3600")]);
    const { client: c, retries } = client(server.url);
    const error = await c.search(SEARCH).catch((e) => e);
    assert.ok(error instanceof RateLimitError);
    assert.equal(error.retryAfterS, 3600);
    assert.equal(error.requestId, "rid-1");
    assert.equal(retries.length, 0);
    assert.equal(server.seen.length, 1);
  });

  test("retries stop after maxRetries; the last refusal is thrown", async () => {
    const server = await serve([refuse(503, "0")]);
    const { client: c } = client(server.url, { maxRetries: 3 });
    const error = await c.search(SEARCH).catch((e) => e);
    assert.ok(error instanceof ServiceUnavailableError);
    assert.ok(error instanceof InternalServerError);
    assert.equal(server.seen.length, 4);
    await c.search(SEARCH, { maxRetries: 0 }).catch(() => {});
    assert.equal(server.seen.length, 5);
  });

  test("other errors are not retried", async () => {
    for (const [status, cls] of [[500, InternalServerError], [401, AuthenticationError], [400, APIError]]) {
      const server = await serve([json(status, { error: { code: "x", message: "no", request_id: "r" } }), ok]);
      const { client: c, retries } = client(server.url);
      const error = await c.search(SEARCH).catch((e) => e);
      assert.ok(error instanceof cls, `${status}: ${error}`);
      assert.equal(error.status, status);
      assert.equal(retries.length, 0);
    }
  });

  test("a lost answer is retried for a read, never for a call that creates", async () => {
    const server = await serve([drop]);
    const { client: c, retries } = client(server.url, { maxRetries: 2 });
    const read = await c.search(SEARCH).catch((e) => e);
    assert.ok(read instanceof APIConnectionError);
    assert.equal(server.seen.length, 3);
    assert.equal(retries.length, 2);
    // Creating a tenant or a key and rotating a key are sent once: each may have acted.
    await c.admin.tenants.create({ name: "t" }).catch(() => {});
    await c.admin.keys.create("t").catch(() => {});
    await c.admin.keys.rotate("t", "k").catch(() => {});
    assert.equal(server.seen.length, 6);
    // ... while PUT, PATCH and DELETE are resent.
    await c.catalogs.upsertItems("c", [{ id: "i", text: { title: "t" } }]).catch(() => {});
    await c.admin.tenants.update("t", { disabled: true }).catch(() => {});
    await c.catalogs.deleteItem("c", "i").catch(() => {});
    assert.equal(server.seen.length, 15);
  });

  test("a lost event batch is resent under the same X-Request-ID, which the service stores it once by", async () => {
    const server = await serve([drop, json(200, { accepted: 1 })]);
    const { client: c, retries } = client(server.url, { maxRetries: 2 });
    const result = await c.events.send(EVENTS);
    assert.equal(result.accepted, 1);
    assert.equal(retries.length, 1);
    assert.equal(server.seen.length, 2);
    const [first, again] = server.seen;
    assert.equal(again.headers["x-request-id"], first.headers["x-request-id"]);
    assert.equal(again.body, first.body);
    assert.equal(first.headers["idempotency-key"], undefined); // none unless asked for
  });

  test("an idempotency key is sent as Idempotency-Key on every attempt", async () => {
    const server = await serve([drop, json(200, { accepted: 1 })]);
    const { client: c } = client(server.url);
    await c.events.send(EVENTS, { idempotencyKey: "order-7/events", requestId: "r-1" });
    assert.deepEqual(server.seen.map((s) => s.headers["idempotency-key"]), ["order-7/events", "order-7/events"]);
    assert.deepEqual(server.seen.map((s) => s.headers["x-request-id"]), ["r-1", "r-1"]);
  });

  test("an idempotency key a header cannot carry, or longer than 128, is refused before sending", async () => {
    const server = await serve([ok]);
    const { client: c } = client(server.url);
    for (const key of ["", "x".repeat(129), "café", "a\nb", " key"]) {
      const error = await c.events.send(EVENTS, { idempotencyKey: key }).catch((e) => e);
      assert.ok(error instanceof TypeError, `${JSON.stringify(key)}: ${error}`);
      assert.match(error.message, /^idempotencyKey: /);
      assert.ok(!key || key.trim() === "" || !error.message.includes(key));
    }
    assert.equal(server.seen.length, 0);
    await c.events.send(EVENTS, { idempotencyKey: "x".repeat(128) });
    assert.equal(server.seen.length, 1);
  });

  test("events are retried when the service refused them (429, 503: nothing kept)", async () => {
    const server = await serve([refuse(503, "0"), refuse(429, "0"), json(200, { accepted: 1 })]);
    const { client: c } = client(server.url);
    const result = await c.events.send(EVENTS);
    assert.equal(result.accepted, 1);
    assert.equal(server.seen.length, 3);
    assert.deepEqual(server.seen.map((s) => JSON.parse(s.body)), [EVENTS, EVENTS, EVENTS]);
  });

  test("a proxy's 503 (no servekit envelope) is not repeated for calls that may have acted", async () => {
    const page = (req, res) => {
      res.writeHead(503, { "content-type": "text/plain" });
      res.end("upstream connect error or disconnect/reset before headers");
    };
    const server = await serve([page]);
    const { client: c, retries } = client(server.url, { maxRetries: 2 });
    const sent = await c.admin.tenants.create({ name: "t" }).catch((e) => e);
    assert.ok(sent instanceof ServiceUnavailableError);
    assert.equal(sent.code, "http_503");
    await c.admin.keys.create("t").catch(() => {});
    await c.admin.keys.rotate("t", "k").catch(() => {});
    assert.equal(server.seen.length, 3); // once each
    assert.equal(retries.length, 0);
    await c.search(SEARCH).catch(() => {}); // a read is repeated
    assert.equal(server.seen.length, 6);
    await c.events.send(EVENTS).catch(() => {}); // so is a batch: stored once by its key
    assert.equal(server.seen.length, 9);
  });

  test("a delete whose answer was lost is done when the repeat finds nothing", async () => {
    const gone = json(404, { error: { code: "not_found", message: "item: no such item", request_id: "r" } });
    const server = await serve([drop, gone]);
    const { client: c } = client(server.url, { maxRetries: 2 });
    assert.deepEqual(await c.catalogs.deleteItem("c", "sku-1"), { id: "sku-1", deleted: true });
    assert.equal(server.seen.length, 2);
    const again = await c.catalogs.deleteItem("c", "sku-1").catch((e) => e); // no lost answer
    assert.equal(again.status, 404);
  });

  test("a lost delete is not done by a 404 that is not about the item", async () => {
    const text = (status, body) => (req, res) => {
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(body);
    };
    const notTheItem = [
      text(404, "Not Found"), // a proxy's page
      json(404, { message: "no route" }), // a proxy's JSON
      json(404, { error: "not found" }), // not servekit's envelope
      json(404, { error: { code: "not_found", message: "no such route", request_id: "r" } }), // servekit: a route it lacks
      json(404, { error: { code: "not_found", message: "no such route (search is off)", request_id: "r" } }),
    ];
    for (const answer of notTheItem) {
      const server = await serve([drop, answer]);
      const { client: c } = client(server.url, { maxRetries: 2 });
      const error = await c.catalogs.deleteItem("c", "sku-1").catch((e) => e);
      assert.ok(error instanceof NotFoundError, String(error));
      assert.equal(server.seen.length, 2);
    }
  });

  test("a delete after a proxy's 503 is done when the repeat finds nothing", async () => {
    const gone = json(404, { error: { code: "not_found", message: "item: no such item in this catalog", request_id: "r" } });
    const page = (req, res) => {
      res.writeHead(503, { "content-type": "text/plain" });
      res.end("upstream connect error or disconnect/reset before headers");
    };
    // A proxy may answer 503 after passing the delete on: that attempt may have acted.
    const server = await serve([page, gone]);
    const { client: c } = client(server.url, { maxRetries: 2 });
    assert.deepEqual(await c.catalogs.deleteItem("c", "sku-1"), { id: "sku-1", deleted: true });
    assert.equal(server.seen.length, 2);
    // servekit's own 503 did nothing: a 404 after it is the item's absence.
    const refused = await serve([refuse(503, "0"), gone]);
    const { client: d } = client(refused.url, { maxRetries: 2 });
    const error = await d.catalogs.deleteItem("c", "sku-1").catch((e) => e);
    assert.ok(error instanceof NotFoundError, String(error));
    assert.equal(refused.seen.length, 2);
  });

  test("a connection never made is retried even for events", async () => {
    const server = await serve([ok]);
    const url = server.url;
    await server.close();
    servers = servers.filter((s) => s !== server);
    const { client: c, retries } = client(url, { maxRetries: 2 });
    const error = await c.events.send(EVENTS).catch((e) => e);
    assert.ok(error instanceof APIConnectionError, String(error));
    assert.match(error.message, /ECONNREFUSED/);
    assert.equal(retries.length, 2);
  });

  test("a timeout is an APITimeoutError; reads are retried", async () => {
    const server = await serve([hang]);
    const { client: c, retries } = client(server.url, { timeoutMs: 50, maxRetries: 1 });
    const error = await c.models.list().catch((e) => e);
    assert.ok(error instanceof APITimeoutError, String(error));
    assert.equal(server.seen.length, 2);
    assert.equal(retries.length, 1);
    const write = await c.admin.tenants.create({ name: "t" }).catch((e) => e);
    assert.ok(write instanceof APITimeoutError);
    assert.equal(server.seen.length, 3); // sent once: it may have created the tenant
  });

  test("the caller's signal stops the call, waits included, with its reason", async () => {
    const server = await serve([refuse(503, "30")]);
    const { client: c } = client(server.url);
    const controller = new AbortController();
    const pending = c.search(SEARCH, { signal: controller.signal }).catch((e) => e);
    while (server.seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    controller.abort(new Error("user went away"));
    const error = await pending;
    assert.equal(error.message, "user went away");
    assert.equal(server.seen.length, 1);
    const early = await c.search(SEARCH, { signal: AbortSignal.abort() }).catch((e) => e);
    assert.equal(early.name, "AbortError");
  });

  test("an answer that is not servekit's shape still becomes an APIError", async () => {
    const server = await serve([(req, res) => {
      res.writeHead(502, { "content-type": "text/html" });
      res.end("<html>bad gateway</html>");
    }]);
    const { client: c } = client(server.url);
    const error = await c.search(SEARCH).catch((e) => e);
    assert.ok(error instanceof APIError);
    assert.equal(error.code, "http_502");
    assert.equal(error.message, "<html>bad gateway</html>");
    assert.equal(typeof error.requestId, "string");
    assert.equal(error.field, undefined);
  });

  test("an error names the field its message names first", async () => {
    const bad = (message) => json(400, { error: { code: "invalid_request", message, request_id: "r" } });
    const cases = [
      [bad("items.0.attributes.price: NaN"), "items.0.attributes.price"],
      [bad("header.x-routing-key: too long"), "header.x-routing-key"],
      [json(404, { error: { code: "not_found", message: "item: no such item in this catalog", request_id: "r" } }), "item"],
      [bad("no such route"), undefined],
      [(req, res) => { res.writeHead(400, { "content-type": "text/plain" }); res.end("k: bad"); }, undefined],
      [json(400, { error: "k: bad" }), undefined],
    ];
    for (const [step, field] of cases) {
      const server = await serve([step]);
      const { client: c } = client(server.url);
      const error = await c.search(SEARCH).catch((e) => e);
      assert.ok(error instanceof APIError, String(error));
      assert.equal(error.field, field, error.message);
    }
  });
});

describe("deprecation", () => {
  test("a Deprecation header is told once per route, with Sunset and Link", async () => {
    const headers = { deprecation: "@1800057600", sunset: "Thu, 15 Jul 2027 00:00:00 GMT", link: '<https://x>; rel="deprecation"' };
    const server = await scripted([json(200, { data: [] }, headers)]);
    try {
      const told = [];
      const c = new ServekitClient({ baseUrl: server.url, apiKey: "k", onDeprecated: (n) => told.push(n) });
      await c.models.list();
      assert.deepEqual(told, [{ method: "GET", path: "/v1/models", deprecation: "@1800057600",
        sunset: headers.sunset, link: headers.link }]);
      const warned = [];
      const original = console.warn;
      console.warn = (line) => warned.push(line);
      try {
        const quiet = new ServekitClient({ baseUrl: server.url, apiKey: "k" });
        await quiet.models.list();
        await quiet.models.list();
      } finally {
        console.warn = original;
      }
      assert.equal(warned.length, 1);
      assert.match(warned[0], /GET \/v1\/models is deprecated; it stops answering after Thu, 15 Jul 2027/);
    } finally {
      await server.close();
    }
  });
});

describe("paths and secrets", () => {
  test("an id a URL cannot carry (empty, . or ..) is refused before sending", async () => {
    const { client: c } = client("http://127.0.0.1:9");
    for (const id of ["", ".", ".."]) {
      await assert.rejects(c.catalogs.getItem("c", id), TypeError);
      await assert.rejects(c.features.get(id, "u"), TypeError); // the entity too, as in Python
    }
  });

  test("every path parameter is percent-encoded, the features' entity included", async () => {
    const server = await scripted([json(404, { error: { code: "not_found", message: "entity: no such entity", request_id: "r" } })]);
    try {
      const { client: c } = client(server.url);
      await c.features.get("user/../../admin", "u 1").catch(() => {});
      assert.equal(server.seen[0].url, "/v1/features/user%2F..%2F..%2Fadmin/u%201");
    } finally {
      await server.close();
    }
  });

  test("the API key shows neither in console.log nor in JSON", async () => {
    const { inspect } = await import("node:util");
    const { client: c } = client("http://127.0.0.1:9", { apiKey: "sk-very-secret-key" });
    assert.ok(!inspect(c, { depth: 10, showHidden: true }).includes("sk-very-secret"));
    assert.ok(!JSON.stringify(c).includes("sk-very-secret"));
  });
});

describe("settings", () => {
  test("the key comes from SERVEKIT_API_KEY; none at all is refused", () => {
    const saved = process.env.SERVEKIT_API_KEY;
    try {
      delete process.env.SERVEKIT_API_KEY;
      assert.throws(() => new ServekitClient(), ServekitError);
      assert.doesNotThrow(() => new ServekitClient({ apiKey: null }));
      process.env.SERVEKIT_API_KEY = "sk-env";
      assert.doesNotThrow(() => new ServekitClient());
    } finally {
      if (saved === undefined) delete process.env.SERVEKIT_API_KEY;
      else process.env.SERVEKIT_API_KEY = saved;
    }
  });

  test("Retry-After as seconds or an HTTP date", () => {
    assert.equal(parseRetryAfter("5"), 5);
    assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.UTC(2015, 9, 21, 7, 28, 0)), 10);
    assert.equal(parseRetryAfter("soon"), undefined);
    assert.equal(parseRetryAfter(null), undefined);
  });

  test("backoff without Retry-After doubles, is capped, and is jittered", () => {
    const backoff = { initialDelayMs: 100, maxDelayMs: 1000, maxRetryAfterS: 60 };
    assert.equal(retryDelayMs(0, undefined, backoff, () => 0), 50);
    assert.equal(retryDelayMs(0, undefined, backoff, () => 1), 100);
    assert.equal(retryDelayMs(3, undefined, backoff, () => 1), 800);
    assert.equal(retryDelayMs(9, undefined, backoff, () => 1), 1000);
    assert.equal(retryDelayMs(0, 61, backoff), undefined);
  });
});
