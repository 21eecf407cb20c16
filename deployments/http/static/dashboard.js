// servekit's dashboard: reads /admin/v1/dashboard/state and /metrics with the key the
// user entered (kept in sessionStorage, sent only in the Authorization header, never
// logged) and draws the time series with uPlot (vendored beside this file).
//
// The metrics route answers totals since each replica started, summed over replicas and
// nodes; rates, ratios and quantiles are the difference between the newest snapshot and
// the one about WINDOW_S older, as Prometheus's rate() and histogram_quantile() take them.
(() => {
  "use strict";

  const KEY = "servekit.dashboard.key";
  const WINDOW_S = 30; // Ray exports every replica's metrics every 10 s
  const HISTORY_S = 900;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

  const $ = (id) => document.getElementById(id);
  let refreshS = 5;
  let timer = null;
  let refreshes = 0;
  const snapshots = []; // {at, counters: Map, histograms: Map}
  const points = []; // {t, plots: {plotId: {series: value}}}
  const plots = {}; // plotId -> {chart, names}

  class Refused extends Error {}

  // ---- HTTP ---------------------------------------------------------------------

  async function get(path) {
    const key = sessionStorage.getItem(KEY);
    const response = await fetch(new URL(path, document.baseURI), {
      headers: { Authorization: "Bearer " + key },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (response.status === 401) throw new Refused("the key was refused");
    if (response.status === 403) throw new Refused("this key lacks the admin scope");
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  // ---- the page's life ----------------------------------------------------------

  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    tick();
  }

  function stop(message) {
    sessionStorage.removeItem(KEY);
    clearTimeout(timer);
    $("main").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStatus("");
  }

  async function tick() {
    clearTimeout(timer);
    try {
      const [state, metrics] = await Promise.all([
        get("admin/v1/dashboard/state"),
        get("admin/v1/dashboard/metrics"),
      ]);
      refreshS = state.refresh_s || refreshS;
      renderState(state);
      addSnapshot(metrics);
      renderPlots();
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      const failed = metrics.nodes_failed ? `, ${metrics.nodes_failed} node(s) not answering` : "";
      setStatus(`updated ${new Date(state.at * 1000).toLocaleTimeString()} from ` +
        `${metrics.nodes} node(s)${failed}; every ${refreshS} s`);
    } catch (e) {
      if (e instanceof Refused) {
        stop(e.message);
        return;
      }
      setStatus("refresh failed: " + e.message, true);
    }
    timer = setTimeout(tick, refreshS * 1000);
  }

  function setStatus(text, error) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(error));
  }

  // ---- state: models, deployments, usage -----------------------------------------

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function row(cells) {
    const tr = el("tr");
    for (const [text, cls] of cells) tr.append(el("td", text, cls));
    return tr;
  }

  const pct = (x) => (x * 100).toFixed(1) + "%";

  function renderState(state) {
    $("application").textContent = "application " + state.application;
    const running = {};
    for (const d of state.deployments) running[d.name] = `${d.running}/${d.replicas}`;
    const models = $("models");
    models.replaceChildren(...state.models.map((m) => modelCard(m, running)));
    $("deployments").tBodies[0].replaceChildren(...state.deployments.map((d) =>
      row([[d.name], [d.status], [`${d.running}/${d.replicas}`, "num"]])));
    $("usage-day").textContent = "(" + state.day + ", UTC)";
    $("usage").tBodies[0].replaceChildren(...state.usage.map((u) =>
      row([[u.tenant_id], [u.requests, "num"], [u.texts, "num"], [u.errors, "num"]])));
  }

  function modelCard(model, running) {
    const card = el("div", null, "model");
    card.dataset.model = model.id;
    card.append(el("h3", model.id));
    const rollout = model.rollout;
    if (rollout) {
      const p = el("p", null, "rollout");
      const w = rollout.window;
      p.append(`canary ${rollout.canary}: `, el("span", rollout.state.replace("_", " "),
        "state-" + rollout.state));
      p.append(` (window: ${w.requests} calls, ${pct(w.error_rate)} errors, ` +
        `p95 ${w.p95_latency_ms.toFixed(0)} ms; limits: ` +
        `${pct(rollout.policy.max_error_rate)} errors` +
        (rollout.policy.max_p95_latency_ms ? `, p95 ${rollout.policy.max_p95_latency_ms} ms` : "") +
        ")");
      if (rollout.decided_at) {
        p.append(` at ${new Date(rollout.decided_at * 1000).toLocaleString()}`);
      }
      if (rollout.reason) p.append(": " + rollout.reason);
      card.append(p);
    }
    const shadow = model.shadow;
    if (shadow) {
      const pairs = Object.entries(shadow.pairs).map(([pair, c]) =>
        `${pair}: ${c.requests} copies, ${c.errors} errors, ${c.dropped} dropped, mean cosine ` +
        (c.mean_cosine === null ? "-" : c.mean_cosine.toFixed(4)));
      card.append(el("p", `shadow: ${pct(shadow.fraction)} of requests copied to ` +
        `${shadow.version}` + (pairs.length ? " (" + pairs.join("; ") + ")" : ""), "shadow"));
    }
    const table = el("table", null, "versions");
    const head = el("tr");
    for (const [name, cls] of [["version"], ["weight"], ["configured", "num"], ["runtime"],
      ["deployment"], ["replicas", "num"], ["req/s (last minute)", "num"],
      ["errors", "num"], ["p95 ms", "num"]]) head.append(el("th", name, cls));
    table.append(el("thead"));
    table.tHead.append(head);
    const body = el("tbody");
    for (const v of model.versions) {
      const deployment = v.deployment.startsWith("Ingress") ? "Ingress" : v.deployment;
      const weight = el("td", null, "weight");
      const bar = el("span", null, "bar");
      bar.style.width = v.weight * 1.2 + "px";
      weight.append(bar, el("span", v.weight, "weight-value"));
      const recent = v.recent || {};
      const tr = el("tr");
      tr.dataset.version = v.name;
      tr.append(el("td", v.name), weight, el("td", v.configured_weight, "num configured"),
        el("td", `${v.runtime} on ${v.device}`), el("td", v.deployment),
        el("td", running[deployment] || "?", "num"),
        el("td", (recent.rate_per_s ?? 0).toFixed(2), "num"),
        el("td", pct(recent.error_rate ?? 0), "num"),
        el("td", (recent.p95_latency_ms ?? 0).toFixed(1), "num"));
      body.append(tr);
    }
    table.append(body);
    card.append(table);
    return card;
  }

  // ---- metrics: snapshots, rates, quantiles --------------------------------------

  const seriesKey = (s) => s.name + JSON.stringify(s.labels);

  function addSnapshot(doc) {
    const counters = new Map(doc.counters.map((s) => [seriesKey(s), s]));
    const histograms = new Map(doc.histograms.map((s) => [seriesKey(s), s]));
    const snap = { at: doc.at, counters, histograms };
    snapshots.push(snap);
    while (snapshots.length > 2 && snapshots[1].at <= doc.at - WINDOW_S) snapshots.shift();
    const base = snapshots[0];
    if (base === snap || doc.at - base.at <= 0) return;
    points.push({ t: doc.at, plots: computePlots(base, snap) });
    while (points.length && points[0].t < doc.at - HISTORY_S) points.shift();
  }

  // Per series: the increase from `base` to `now`; null where a total went down (a
  // replica stopped and took its part with it): that window is left out.
  function increases(base, now, kind, name, filter) {
    const out = [];
    for (const [key, s] of now[kind]) {
      if (s.name !== name || !filter(s.labels)) continue;
      const before = base[kind].get(key);
      if (kind === "counters") {
        const d = s.value - (before ? before.value : 0);
        out.push({ labels: s.labels, value: d < 0 ? null : d });
      } else {
        const counts = s.counts.map((c, i) => c - (before ? before.counts[i] : 0));
        const count = s.count - (before ? before.count : 0);
        const broken = count < 0 || counts.some((c) => c < 0);
        out.push({ labels: s.labels, bounds: s.bounds, counts: broken ? null : counts,
          count: broken ? null : count });
      }
    }
    return out;
  }

  function group(items, by, pick) {
    const out = {};
    for (const item of items) {
      const g = by(item.labels);
      if (g === null) continue;
      const v = pick(item);
      if (v === null || out[g] === null) {
        out[g] = null;
        continue;
      }
      out[g] = (out[g] || 0) + v;
    }
    return out;
  }

  // Histogram increases summed per group, then the q-quantile of each (linear within
  // the bucket, as histogram_quantile does); `scale` turns seconds into ms.
  function quantiles(items, by, q, scale) {
    const sums = {};
    for (const item of items) {
      const g = by(item.labels);
      if (g === null) continue;
      if (item.counts === null) {
        sums[g] = null;
        continue;
      }
      if (sums[g] === null) continue;
      const acc = sums[g] || (sums[g] = { bounds: item.bounds, counts: item.bounds.map(() => 0),
        count: 0 });
      item.counts.forEach((c, i) => { acc.counts[i] += c; });
      acc.count += item.count;
    }
    const out = {};
    for (const [g, h] of Object.entries(sums)) {
      out[g] = h === null ? null : quantile(q, h.bounds, h.counts, h.count);
      if (out[g] !== null) out[g] *= scale;
    }
    return out;
  }

  function quantile(q, bounds, counts, total) {
    if (!total) return null;
    const rank = q * total;
    let low = 0;
    let below = 0;
    for (let i = 0; i < bounds.length; i++) {
      if (counts[i] >= rank) {
        const inside = counts[i] - below;
        return low + (bounds[i] - low) * (inside > 0 ? (rank - below) / inside : 0);
      }
      low = bounds[i];
      below = counts[i];
    }
    return bounds.length ? bounds[bounds.length - 1] : null;
  }

  function ratio(num, den, scale) {
    const out = {};
    for (const [g, d] of Object.entries(den)) {
      if (d === null || num[g] === null) out[g] = null;
      else out[g] = d > 0 ? ((num[g] || 0) / d) * scale : null;
    }
    return out;
  }

  const perSecond = (values, dt) => Object.fromEntries(
    Object.entries(values).map(([g, v]) => [g, v === null ? null : v / dt]));

  const version = (l) => (l.model === "-" || l.version === "-" ? null : `${l.model}/${l.version}`);

  function computePlots(base, now) {
    const dt = now.at - base.at;
    const all = () => true;
    const requests = increases(base, now, "counters", "servekit_requests_total", all);
    const value = (i) => i.value;
    const served = group(requests, version, value);
    const failed = group(requests, (l) => (l.code.startsWith("5") ? version(l) : null), value);
    const latency = increases(base, now, "histograms", "servekit_request_duration_seconds", all);
    const lookups = increases(base, now, "counters", "servekit_embedding_cache_lookups_total", all);
    const hits = group(lookups, (l) => (l.result === "hit" ? l.use : null), value);
    const looked = group(lookups, (l) => (l.tier === "memory" ? l.use : null), value);
    const tenants = increases(base, now, "counters", "servekit_tenant_requests_total", all);
    const cosines = increases(base, now, "histograms", "servekit_shadow_cosine", all);
    const searchRoute = (l) => (l.route === "/v1/search" || l.route === "/v1/recommendations");
    const routeName = (l) => l.route.replace("/v1/", "");
    return {
      rate: perSecond(served, dt),
      errors: ratio(failed, served, 100),
      p95: quantiles(latency, version, 0.95, 1000),
      cache: ratio(hits, looked, 100),
      search: {
        ...quantiles(latency, (l) => (searchRoute(l) ? routeName(l) + " p50" : null), 0.5, 1000),
        ...quantiles(latency, (l) => (searchRoute(l) ? routeName(l) + " p95" : null), 0.95, 1000),
      },
      tenants: perSecond(group(tenants, (l) => l.tenant, value), dt),
      shadow: quantiles(cosines, (l) => `${l.model} ${l.primary}→${l.shadow}`, 0.05, 1),
    };
  }

  // ---- plots --------------------------------------------------------------------

  const UNITS = { rate: "req/s", errors: "%", p95: "ms", cache: "%", search: "ms",
    tenants: "req/s", shadow: "cosine" };

  function renderPlots() {
    for (const id of Object.keys(UNITS)) {
      const names = [...new Set(points.flatMap((p) => Object.keys(p.plots[id] || {})))].sort();
      const data = [points.map((p) => p.t),
        ...names.map((n) => points.map((p) => (p.plots[id] || {})[n] ?? null))];
      drawPlot(id, names, data);
    }
  }

  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function drawPlot(id, names, data) {
    const figure = $("plot-" + id);
    const values = data.slice(1).flat().filter((v) => v !== null);
    figure.dataset.points = String(values.length);
    figure.dataset.max = values.length ? String(Math.max(...values)) : "";
    figure.dataset.series = JSON.stringify(names);
    let plot = plots[id];
    if (!names.length) {
      if (plot) plot.chart.destroy();
      delete plots[id];
      figure.querySelector(".empty") || figure.append(el("div", "no data yet", "empty"));
      return;
    }
    figure.querySelector(".empty")?.remove();
    if (plot && plot.names.join("\n") === names.join("\n")) {
      plot.chart.setData(data);
      return;
    }
    if (plot) plot.chart.destroy();
    const options = {
      width: Math.max(300, figure.clientWidth - 16),
      height: 220,
      scales: { x: { time: true } },
      series: [{}, ...names.map((name, i) => ({
        label: name,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: false,
        points: { show: true, size: 5 },
        value: (u, v) => (v === null || v === undefined ? "-" : v.toFixed(id === "shadow" ? 4 : 2)),
      }))],
      axes: [
        { values: (u, splits) => splits.map((t) => clock(t)), space: 70 },
        { label: UNITS[id], size: 60 },
      ],
    };
    plots[id] = { chart: new uPlot(options, data, figure), names };
  }

  window.addEventListener("resize", () => {
    for (const id of Object.keys(plots)) {
      const figure = $("plot-" + id);
      plots[id].chart.setSize({ width: Math.max(300, figure.clientWidth - 16), height: 220 });
    }
  });

  // ---- wiring --------------------------------------------------------------------

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("login-error").textContent = "";
    start();
  });
  $("forget").addEventListener("click", () => stop("key forgotten"));
  if (sessionStorage.getItem(KEY)) start();
})();
