// The dashboard's arithmetic (deployments/http/static/metrics.js) under Node's test
// runner: run by tests/unit/deployments/test_dashboard_js.py, or
// `node --test tests/unit/deployments/dashboard_metrics.test.js`.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const { History, quantile } = require(
  path.join(__dirname, "..", "..", "..", "deployments", "http", "static", "metrics.js"));

const WINDOW_S = 30;
const SERIES = { model: "minilm", version: "v1", route: "/v1/embeddings", code: "200" };

// A metrics route answer: `perNode` requests on each node that answered (node ids "n0",
// "n1", ... unless `ids` names them).
function doc(at, perNode, failed = 0, ids = perNode.map((_, n) => `n${n}`)) {
  const total = perNode.reduce((a, b) => a + b, 0);
  return {
    at,
    nodes: perNode.length,
    nodes_failed: failed,
    node_set: [...ids].sort().join(","),
    counters: [{ name: "servekit_requests_total", labels: SERIES, value: total }],
    histograms: [],
  };
}

const rates = (history) => history.points.map((p) => (p.plots.rate || {})["minilm/v1"] ?? null);

test("a steady rate plots as that rate", () => {
  const history = new History(WINDOW_S, 900);
  for (let t = 0; t <= 60; t += 5) history.add(doc(t, [1000 + 10 * t, 2000 + 10 * t]));
  assert.deepEqual(new Set(rates(history)), new Set([20]));
});

test("a node that missed one scrape makes a gap, not a spike", () => {
  // Two nodes, 10 req/s each; node b's endpoint times out once at t=35. Before, the
  // partial snapshot became the base and the next points counted b's whole total.
  const history = new History(WINDOW_S, 900);
  for (let t = 0; t <= 120; t += 5) {
    const a = 50000 + 10 * t;
    const b = 100000 + 10 * t;
    history.add(t === 35 ? doc(t, [a], 1) : doc(t, [a, b]));
  }
  const plotted = rates(history);
  assert.ok(plotted.includes(null), "the partial snapshot is a gap");
  for (const rate of plotted) assert.ok(rate === null || rate === 20, `plotted ${rate}`);
});

test("a partial snapshot is never a base", () => {
  const history = new History(WINDOW_S, 900);
  history.add(doc(0, [1000, 2000]));
  history.add(doc(5, [1050], 1));
  assert.deepEqual(history.snapshots.map((s) => s.at), [0]);
  history.add(doc(10, [1100, 2100]));
  assert.deepEqual(rates(history), [20]);
});

test("another set of nodes starts the difference again", () => {
  const history = new History(WINDOW_S, 900);
  history.add(doc(0, [1000]));
  history.add(doc(5, [1050]));
  history.add(doc(10, [1100, 7000])); // a node joined, with totals of its own
  history.add(doc(15, [1150, 7050]));
  assert.deepEqual(rates(history), [10, null, 20]);
  assert.deepEqual(history.snapshots.map((s) => s.at), [10, 15]);
});

test("a node replaced by another between two refreshes starts the difference again", () => {
  // Two nodes at 10 req/s each; between t=10 and t=15 node b left and node c, with a
  // larger total of its own, took its place: the count of nodes stayed 2.
  const history = new History(WINDOW_S, 900);
  history.add(doc(0, [1000, 2000], 0, ["a", "b"]));
  history.add(doc(5, [1050, 2050], 0, ["a", "b"]));
  history.add(doc(10, [1100, 2100], 0, ["a", "b"]));
  history.add(doc(15, [1150, 9000], 0, ["a", "c"]));
  history.add(doc(20, [1200, 9050], 0, ["a", "c"]));
  assert.deepEqual(rates(history), [20, 20, null, 20]);
});

test("snapshots without a node set compare by count", () => {
  const history = new History(WINDOW_S, 900);
  const bare = (at, perNode) => {
    const d = doc(at, perNode);
    delete d.node_set;
    return d;
  };
  history.add(bare(0, [1000]));
  history.add(bare(5, [1050]));
  assert.deepEqual(rates(history), [10]);
});

test("no gap is drawn before the first point", () => {
  const history = new History(WINDOW_S, 900);
  history.add(doc(0, [1000], 1));
  history.add(doc(5, [1000, 2000]));
  assert.deepEqual(history.points, []);
});

test("quantiles interpolate within the bucket", () => {
  assert.equal(quantile(0.5, [0.01, 0.1], [50, 100], 100), 0.01);
  assert.ok(Math.abs(quantile(0.95, [0.01, 0.1], [50, 100], 100) - 0.091) < 1e-12);
  assert.equal(quantile(0.5, [0.01], [0], 0), null);
});
