// servekit's dashboard: reads /admin/v1/dashboard/state and /metrics with the key the
// user entered (kept in sessionStorage, sent only in the Authorization header, never
// logged) and draws the time series with uPlot (vendored beside this file).
//
// Rates, ratios and quantiles come from successive metrics snapshots (metrics.js, loaded
// before this file), over a window of about WINDOW_S.
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
  const history = new servekitMetrics.History(WINDOW_S, HISTORY_S); // points: {t, plots}
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
      history.add(metrics);
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

  // ---- plots --------------------------------------------------------------------

  const UNITS = { rate: "req/s", errors: "%", p95: "ms", cache: "%", search: "ms",
    tenants: "req/s", shadow: "cosine" };

  function renderPlots() {
    const points = history.points;
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
