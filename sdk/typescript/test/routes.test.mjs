// Every `/v1` and `/admin/v1` operation of api/openapi.json has a client method: each
// method is called once against a local server that records what it was sent, and the
// recorded method and path are matched to the document's operations.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { ServekitClient } from "@servekit/client";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DOCUMENT = JSON.parse(readFileSync(join(ROOT, "..", "..", "api", "openapi.json"), "utf8"));

/** Every method of the client, called once with made-up arguments. */
const CALLS = [
  (c) => c.embeddings.create({ model: "m", input: "x" }),
  (c) => c.search({ catalog: "c", query: "q" }),
  (c) => c.recommendations.create({ user: "u", k: 3 }),
  (c) => c.catalogs.list(),
  (c) => c.catalogs.configure("c", { hybrid: true }),
  (c) => c.catalogs.upsertItems("c", [{ id: "i", text: { title: "t" } }]),
  (c) => c.catalogs.getItem("c", "i"),
  (c) => c.catalogs.deleteItem("c", "i"),
  (c) => c.events.send({ events: [{ user: "u", item: "i", type: "view" }] }),
  (c) => c.features.get("user", "u"),
  (c) => c.models.list(),
  (c) => c.models.retrieve("m"),
  (c) => c.usage.get({ start: "2026-01-01", end: new Date(Date.UTC(2026, 0, 31)) }),
  (c) => c.admin.searchIndexes(),
  (c) => c.admin.dashboard.state(),
  (c) => c.admin.dashboard.metrics(),
  (c) => c.admin.tenants.list(),
  (c) => c.admin.tenants.create({ name: "n" }),
  (c) => c.admin.tenants.get("t"),
  (c) => c.admin.tenants.update("t", { disabled: false }),
  (c) => c.admin.tenants.usage("t"),
  (c) => c.admin.keys.list("t"),
  (c) => c.admin.keys.create("t"),
  (c) => c.admin.keys.revoke("t", "k"),
  (c) => c.admin.keys.rotate("t", "k"),
];

/** `METHOD /path/{param}` of a recorded call, by the document's path templates. */
function operationOf(method, url) {
  const path = new URL(url, "http://x").pathname;
  for (const template of Object.keys(DOCUMENT.paths)) {
    const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    if (pattern.test(path) && DOCUMENT.paths[template][method.toLowerCase()]) return `${method} ${template}`;
  }
  return `${method} ${path} (not in the document)`;
}

test("every /v1 and /admin/v1 operation has a client method", async () => {
  const seen = [];
  const server = createServer((req, res) => {
    seen.push(operationOf(req.method, req.url));
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  try {
    const client = new ServekitClient({ baseUrl: `http://127.0.0.1:${server.address().port}`, apiKey: "sk-x" });
    for (const call of CALLS) await call(client);
  } finally {
    await new Promise((done) => server.close(done));
  }
  const documented = [];
  for (const [path, operations] of Object.entries(DOCUMENT.paths)) {
    if (!path.startsWith("/v1/") && !path.startsWith("/admin/v1/")) continue;
    for (const method of Object.keys(operations)) {
      if (["get", "put", "post", "patch", "delete"].includes(method)) documented.push(`${method.toUpperCase()} ${path}`);
    }
  }
  assert.deepEqual([...new Set(seen)].sort(), documented.sort());
  assert.equal(seen.length, CALLS.length); // one operation per method
});
