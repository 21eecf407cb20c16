// Every call against a live servekit (tests/integration/test_sdk_typescript.py starts
// it and sets SERVEKIT_TEST_URL, SERVEKIT_TEST_KEY: the test tenant's key, which may pin
// versions, and SERVEKIT_TEST_ADMIN_KEY: the operator credential). Without them these
// tests are skipped, and the pytest wrapper fails any run that skipped one.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { before, describe, test } from "node:test";

import {
  APITimeoutError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  InvalidEventsError,
  NotFoundError,
  RateLimitError,
  ServekitClient,
} from "@servekit/client";

const URL = process.env.SERVEKIT_TEST_URL;
const skip = !URL && "SERVEKIT_TEST_URL is not set";
const unique = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;
// Test-only versions of the session's config (tests/integration/conftest.py).
const SLOW_VERSION = "v2-slow"; // 400 ms more per call
const FAULTY_VERSION = "v2-faulty"; // every call fails
const DIM = 384;

const ITEMS = [
  { id: "boot", text: { title: "Waterproof trail boot", brand: "Acme" },
    attributes: { category: "shoes", price: 120, tags: ["trail"] } },
  { id: "sock", text: { title: "Merino wool sock" }, attributes: { category: "socks", price: 9.5 } },
];

describe("against the service", { skip }, () => {
  let tenant; // the test tenant's client
  let operator;
  before(() => {
    tenant = new ServekitClient({ baseUrl: URL, apiKey: process.env.SERVEKIT_TEST_KEY });
    operator = new ServekitClient({ baseUrl: URL, apiKey: process.env.SERVEKIT_TEST_ADMIN_KEY });
  });

  test("embeddings: vectors, a pinned version and sticky routing", async () => {
    const made = await tenant.embeddings.create({ model: "minilm", input: ["red running shoes", "trail sneakers"] });
    assert.equal(made.data.length, 2);
    assert.equal(made.data[0].embedding.length, DIM);
    assert.ok(["v1", "v2"].includes(made.version), String(made.version)); // X-Model-Version: the split's pick
    const pinnedMade = await tenant.embeddings.create({ model: "minilm", input: "pinned" }, { version: "v1" });
    assert.equal(pinnedMade.version, "v1");
    const pinned = await tenant.request({ method: "POST", path: "/v1/embeddings", retry: "idempotent",
      body: { model: "minilm", input: "pinned" } }, { version: "v1" });
    assert.equal(pinned.modelVersion, "v1");
    assert.equal(pinned.headers.get("api-version"), "1");
    const key = unique("user");
    const first = await tenant.request({ method: "POST", path: "/v1/embeddings", retry: "idempotent",
      body: { model: "minilm", input: "a" } }, { routingKey: key });
    for (let i = 0; i < 3; i++) {
      const again = await tenant.request({ method: "POST", path: "/v1/embeddings", retry: "idempotent",
        body: { model: "minilm", input: "b" } }, { routingKey: key });
      assert.equal(again.modelVersion, first.modelVersion);
    }
  });

  test("errors carry status, code, message and the request id", async () => {
    const requestId = unique("sdk-test");
    const missing = await tenant.embeddings.create({ model: "no-such-model", input: "x" }, { requestId }).catch((e) => e);
    assert.ok(missing instanceof NotFoundError, String(missing));
    assert.equal(missing.status, 404);
    assert.equal(missing.code, "not_found");
    assert.match(missing.message, /model/);
    assert.equal(missing.requestId, requestId);

    const bad = await tenant.search({ catalog: "any", query: "q", k: 0 }).catch((e) => e);
    assert.ok(bad instanceof BadRequestError, String(bad));
    assert.equal(bad.code, "invalid_request");
    assert.match(bad.message, /^k:/);
    assert.equal(bad.field, "k");

    const retries = [];
    const stranger = new ServekitClient({ baseUrl: URL, apiKey: "sk-not-a-key", onRetry: (r) => retries.push(r) });
    const refused = await stranger.models.list().catch((e) => e);
    assert.ok(refused instanceof AuthenticationError, String(refused));
    assert.equal(refused.code, "unauthorized");
    assert.equal(retries.length, 0);

    const failed = await tenant.embeddings.create({ model: "minilm", input: "x" }, { version: FAULTY_VERSION }).catch((e) => e);
    assert.ok(failed instanceof InternalServerError, String(failed));
    assert.equal(failed.status, 500);
    assert.equal(failed.code, "inference_failed");
    assert.ok(failed.message.includes(failed.requestId), failed.message); // a 5xx names it
  });

  test("a call past its timeout is aborted: APITimeoutError, retried when idempotent", async () => {
    const retries = [];
    const impatient = new ServekitClient({ baseUrl: URL, apiKey: process.env.SERVEKIT_TEST_KEY, timeoutMs: 50,
      maxRetries: 1, backoff: { initialDelayMs: 1 }, onRetry: (r) => retries.push(r) });
    const error = await impatient.embeddings.create({ model: "minilm", input: "slow" }, { version: SLOW_VERSION }).catch((e) => e);
    assert.ok(error instanceof APITimeoutError, String(error));
    assert.equal(retries.length, 1);
    assert.ok(retries[0].error instanceof APITimeoutError);
    // The same version answers within a generous timeout.
    const answered = await tenant.embeddings.create({ model: "minilm", input: "slow" }, { version: SLOW_VERSION, timeoutMs: 20_000 });
    assert.equal(answered.data.length, 1);
  });

  test("catalogs, items and search", async () => {
    const catalog = unique("sdk");
    const configured = await tenant.catalogs.configure(catalog, { hybrid: true });
    assert.equal(configured.name, catalog);
    const upserted = await tenant.catalogs.upsertItems(catalog, ITEMS);
    assert.equal(upserted.upserted, 2);
    const item = await tenant.catalogs.getItem(catalog, "boot");
    assert.deepEqual(item.text, ITEMS[0].text);
    const listed = await tenant.catalogs.list();
    assert.equal(listed.data.find((c) => c.name === catalog)?.items, 2);
    // A new catalog's index may still be building (503 index_building, Retry-After):
    // the client waits it out.
    const found = await tenant.search({ catalog, query: "boots for hiking", k: 2 });
    assert.equal(found.data[0].id, "boot");
    assert.equal(found.catalog, catalog);
    const cheap = await tenant.search({ catalog, query: "boots", filters: { price: { lte: 10 } } });
    assert.deepEqual(cheap.data.map((h) => h.id), ["sock"]);
    const deleted = await tenant.catalogs.deleteItem(catalog, "sock");
    assert.deepEqual(deleted, { id: "sock", deleted: true });
    const gone = await tenant.catalogs.getItem(catalog, "sock").catch((e) => e);
    assert.ok(gone instanceof NotFoundError);
    // Another tenant's catalog of the same name is not this one.
    const other = await freshTenant(operator, {});
    const elsewhere = await other.client.catalogs.getItem(catalog, "boot").catch((e) => e);
    assert.ok(elsewhere instanceof NotFoundError, String(elsewhere));
  });

  test("events and features; a batch with bad events says what was kept", async () => {
    const catalog = unique("sdk-ev");
    await tenant.catalogs.upsertItems(catalog, ITEMS);
    const user = unique("u");
    const sent = await tenant.events.send({ catalog, events: [{ user, item: "boot", type: "click" }] });
    assert.equal(sent.accepted, 1);
    const features = await tenant.features.get("user", user);
    assert.equal(features.object, "features");
    assert.equal(features.id, user);
    assert.equal(features.views.user_activity.clicks, 1);
    // A batch resent in another call with the same idempotency key is stored once.
    const idempotencyKey = unique("batch");
    const batch = { catalog, events: [{ user, item: "sock", type: "click" }] };
    const first = await tenant.events.send(batch, { idempotencyKey });
    const again = await tenant.events.send(batch, { idempotencyKey });
    assert.deepEqual(again, first);
    assert.equal((await tenant.features.get("user", user)).views.user_activity.clicks, 2);
    const reused = await tenant.events
      .send({ catalog, events: [{ user, item: "boot", type: "view" }] }, { idempotencyKey })
      .catch((e) => e);
    assert.ok(reused instanceof BadRequestError, String(reused));
    assert.equal(reused.code, "idempotency_key_reused");
    const mixed = await tenant.events
      .send({ catalog, events: [{ user, item: "sock", type: "view" }, { user, item: "boot", type: "teleport" }] })
      .catch((e) => e);
    assert.ok(mixed instanceof InvalidEventsError, String(mixed));
    assert.equal(mixed.status, 400);
    assert.equal(mixed.result.accepted, 1);
    assert.equal(mixed.result.errors[0].field, "events.1.type");
  });

  test("recommendations: a user's items of the catalog, never what they have seen", async () => {
    const catalog = unique("sdk-rec");
    const items = ["hat", "scarf", "glove", "mug", "lamp", "boot"].map((id, n) => ({
      id, text: { title: `${id} number ${n}` }, attributes: { category: n % 2 ? "wear" : "home", price: 10 + n },
    }));
    await tenant.catalogs.upsertItems(catalog, items);
    const user = unique("u");
    await tenant.events.send({ catalog, events: [{ user, item: "boot", type: "purchase" }] });
    let got;
    for (let tries = 0; got === undefined; tries++) {
      // A catalog just written may not be known to the recommender yet (404).
      got = await tenant.recommendations.create({ user, catalog, k: 3 }).catch((e) => {
        if (!(e instanceof NotFoundError) || tries >= 60) throw e;
        return new Promise((done) => setTimeout(() => done(undefined), 500));
      });
    }
    assert.equal(got.catalog, catalog);
    assert.ok(got.data.length >= 1 && got.data.length <= 3, JSON.stringify(got.data));
    for (const hit of got.data) assert.ok(items.some((i) => i.id === hit.id), hit.id);
    assert.ok(!got.data.some((hit) => hit.id === "boot")); // exclude_seen defaults to true
    const bad = await tenant.recommendations.create({ user, catalog, k: 0 }).catch((e) => e);
    assert.ok(bad instanceof BadRequestError, String(bad));
    assert.match(bad.message, /^k:/);
  });

  test("models and usage", async () => {
    const models = await tenant.models.list();
    assert.ok(models.data.some((m) => m.id === "minilm"));
    const detail = await tenant.models.retrieve("minilm");
    assert.ok(detail.versions.some((v) => v.name === "v1"));
    const usage = await tenant.usage.get({ end: new Date() });
    assert.equal(usage.tenant_id, "test-tenant");
    assert.ok(usage.requests > 0);
  });

  test("admin: tenants, keys, rotation, revocation, usage, indexes", async () => {
    const id = unique("sdk-t");
    const made = await operator.admin.tenants.create({ name: "SDK test", id, limits: { requests_per_s: 50 } });
    assert.equal(made.id, id);
    assert.equal((await operator.admin.tenants.get(id)).name, "SDK test");
    assert.ok((await operator.admin.tenants.list()).some((t) => t.id === id));
    const updated = await operator.admin.tenants.update(id, { limits: { requests_per_s: 100 } });
    assert.equal(updated.limits.requests_per_s, 100);
    const key = await operator.admin.keys.create(id, { name: "sdk", scopes: ["embed", "usage", "admin"] });
    assert.match(key.key, /^sk-/);
    const own = new ServekitClient({ baseUrl: URL, apiKey: key.key });
    await own.embeddings.create({ model: "minilm", input: "hello" });
    const rotated = await own.admin.keys.rotate(id, key.id, { overlap_s: 0 });
    assert.notEqual(rotated.key, key.key);
    const after = new ServekitClient({ baseUrl: URL, apiKey: rotated.key });
    assert.equal((await after.usage.get()).tenant_id, id);
    const refused = await own.models.list().catch((e) => e);
    assert.ok(refused instanceof AuthenticationError, String(refused));
    const keys = await operator.admin.keys.list(id);
    assert.deepEqual(new Set(keys.map((k) => k.id)), new Set([key.id, rotated.id]));
    const revoked = await operator.admin.keys.revoke(id, rotated.id);
    assert.equal(revoked.state, "revoked");
    assert.ok((await after.usage.get().catch((e) => e)) instanceof AuthenticationError);
    const usage = await operator.admin.tenants.usage(id, { start: new Date(Date.now() - 86_400_000), end: new Date() });
    assert.equal(usage.tenant_id, id);
    const indexes = await operator.admin.searchIndexes();
    assert.equal(typeof indexes.seq, "number");
    const state = await operator.admin.dashboard.state();
    assert.equal(typeof state.at, "number");
    const metrics = await operator.admin.dashboard.metrics();
    assert.ok(Array.isArray(metrics.counters));
    const foreign = await tenant.admin.tenants.get(id).catch((e) => e);
    assert.ok(foreign instanceof NotFoundError, String(foreign)); // never confirms it exists
  });

  test("a rate limit is waited out (Retry-After); a quota is thrown at once", async () => {
    const slow = await freshTenant(operator, { requests_per_s: 1 });
    const refusedAt = [];
    const patient = new ServekitClient({ baseUrl: URL, apiKey: slow.key, maxRetries: 5,
      onRetry: (r) => refusedAt.push(r) });
    const impatient = new ServekitClient({ baseUrl: URL, apiKey: slow.key, maxRetries: 0 });
    let refusal;
    for (let i = 0; i < 5 && refusal === undefined; i++) {
      await impatient.models.list().catch((e) => (refusal = e));
    }
    assert.ok(refusal instanceof RateLimitError, String(refusal));
    assert.equal(refusal.code, "rate_limited");
    assert.ok(refusal.retryAfterS >= 1);
    for (let i = 0; i < 3; i++) await patient.models.list();
    assert.ok(refusedAt.length >= 1);
    for (const retry of refusedAt) {
      assert.ok(retry.error instanceof RateLimitError);
      assert.ok(retry.delayMs >= retry.error.retryAfterS * 1000, `${retry.delayMs} ms`);
    }

    const quota = await freshTenant(operator, { monthly_texts: 1 });
    const counted = [];
    const client = new ServekitClient({ baseUrl: URL, apiKey: quota.key, onRetry: (r) => counted.push(r) });
    await client.embeddings.create({ model: "minilm", input: "one" });
    const over = await client.embeddings.create({ model: "minilm", input: "two" }).catch((e) => e);
    assert.ok(over instanceof RateLimitError, String(over));
    assert.ok(over.retryAfterS > 60);
    assert.equal(counted.length, 0);
  });
});

/** A new tenant with `limits` and a key of it with the default scopes. */
async function freshTenant(operator, limits) {
  const id = unique("sdk-t");
  await operator.admin.tenants.create({ name: id, id, limits });
  const key = await operator.admin.keys.create(id, {});
  return { id, key: key.key, client: new ServekitClient({ baseUrl: URL, apiKey: key.key }) };
}
