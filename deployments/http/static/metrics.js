// The dashboard's arithmetic, apart from the page so that it runs under Node too
// (tests/unit/deployments/dashboard_metrics.test.js): snapshots of the metrics route in,
// plotted points out.
//
// The metrics route answers totals since each replica started, summed over replicas and
// nodes; rates, ratios and quantiles are the difference between the newest snapshot and
// the one about `windowS` older, as Prometheus's rate() and histogram_quantile() take them.
// Only snapshots of every node, and of the same nodes, are differenced: a snapshot that
// missed a node would, as the base of the next difference, count that node's whole total
// as the window's increase.
const servekitMetrics = (() => {
  "use strict";

  const seriesKey = (s) => s.name + JSON.stringify(s.labels);

  // A snapshot as the route answers it -> {at, nodes, nodeSet, counters: Map, histograms: Map}.
  function snapshotOf(doc) {
    return {
      at: doc.at,
      nodes: doc.nodes,
      // The same count of nodes can be other nodes (one replaced another between two
      // refreshes): the set's name tells them apart where the route gives it.
      nodeSet: doc.node_set ?? String(doc.nodes),
      counters: new Map(doc.counters.map((s) => [seriesKey(s), s])),
      histograms: new Map(doc.histograms.map((s) => [seriesKey(s), s])),
    };
  }

  // Successive snapshots and the points they make: `points` is [{t, plots}], a point
  // with no plots being a gap (a snapshot that missed a node, or the first of another
  // node set).
  class History {
    constructor(windowS, historyS) {
      this.windowS = windowS;
      this.historyS = historyS;
      this.snapshots = [];
      this.points = [];
    }

    add(doc) {
      const snap = snapshotOf(doc);
      const last = this.snapshots[this.snapshots.length - 1];
      if (doc.nodes_failed > 0) {
        // Missing a node: neither a base nor a point; a gap where it would be.
        this.push({ t: doc.at, plots: {} });
        return;
      }
      if (last && (last.nodes !== snap.nodes || last.nodeSet !== snap.nodeSet)) {
        // Nodes came or went: their totals are not this window's; start again here.
        this.snapshots = [snap];
        this.push({ t: doc.at, plots: {} });
        return;
      }
      this.snapshots.push(snap);
      const snaps = this.snapshots;
      while (snaps.length > 2 && snaps[1].at <= doc.at - this.windowS) snaps.shift();
      const base = snaps[0];
      if (base === snap || doc.at - base.at <= 0) return;
      this.push({ t: doc.at, plots: computePlots(base, snap) });
    }

    push(point) {
      const gap = Object.keys(point.plots).length === 0;
      if (gap && !this.points.length) return; // nothing drawn yet: no gap to show
      this.points.push(point);
      while (this.points.length && this.points[0].t < point.t - this.historyS) {
        this.points.shift();
      }
    }
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

  return { History, computePlots, quantile, snapshotOf };
})();

if (typeof module === "object" && module.exports) module.exports = servekitMetrics;
