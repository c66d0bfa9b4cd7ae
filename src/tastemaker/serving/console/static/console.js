// The tastemaker console: fetches JSON from /console/api and /healthz, draws tables and
// uPlot charts. No framework; every page's entry point is at the bottom.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const fmt = (v, digits = 1) => v == null || !isFinite(v) ? "–" : Number(v).toLocaleString(undefined, {maximumFractionDigits: digits});
const when = (ts) => ts == null ? "–" : new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " (" + age(ts) + " ago)";
function age(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 120 ? s.toFixed(0) + " s" : s < 7200 ? (s / 60).toFixed(0) + " min" : s < 172800 ? (s / 3600).toFixed(0) + " h" : (s / 86400).toFixed(0) + " d";
}

function status(text, bad) {
  const el = $("#status");
  el.textContent = text;
  el.className = bad ? "bad" : "";
}

function rendered() {
  // Read by the browser test: milliseconds from navigation start to the first data drawn.
  if (!document.documentElement.dataset.rendered) {
    document.documentElement.dataset.rendered = String(Math.round(performance.now()));
  }
}

async function getJSON(url) {
  const r = await fetch(url, {headers: {Accept: "application/json"}});
  const body = await r.json();
  if (!r.ok) throw new Error(url + ": " + r.status + " " + (body.detail || body.error || ""));
  return body;
}

function table(el, head, rows) {
  const header = head.some((h) => h) ? "<tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr>" : "";
  el.innerHTML = header +
    (rows.length ? rows.map((r) => "<tr>" + r.map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("")
      : '<tr><td colspan="' + head.length + '" class="none">none</td></tr>');
}

// ---- metrics: samples are [name, labels, value] -------------------------------------------

function total(samples, name, match = () => true) {
  let t = 0;
  for (const [n, labels, v] of samples) if (n === name && match(labels)) t += v;
  return t;
}

function byLabel(samples, name, label) {
  const out = {};
  for (const [n, labels, v] of samples) {
    if (n === name && label in labels) out[labels[label]] = (out[labels[label]] || 0) + v;
  }
  return out;
}

// Cumulative bucket counts {le: count} of a histogram, summed over processes.
function buckets(samples, name, match = () => true) {
  const out = {};
  for (const [n, labels, v] of samples) {
    if (n === name + "_bucket" && match(labels)) out[labels.le] = (out[labels.le] || 0) + v;
  }
  return out;
}

// The q-quantile of the observations between two bucket snapshots, by linear interpolation
// inside the bucket (as Prometheus' histogram_quantile); null with no observation.
function quantile(now, before, q) {
  const les = Object.keys(now).sort((a, b) => parseFloat(a) - parseFloat(b));
  const counts = les.map((le) => now[le] - ((before && before[le]) || 0));
  const n = counts[counts.length - 1];
  if (!n) return null;
  const rank = q * n;
  let lower = 0;
  for (let i = 0; i < les.length; i++) {
    if (counts[i] >= rank) {
      const upper = parseFloat(les[i]);
      if (!isFinite(upper)) return lower;
      const below = i ? counts[i - 1] : 0;
      const inside = counts[i] - below;
      return lower + (upper - lower) * (inside ? (rank - below) / inside : 0);
    }
    lower = parseFloat(les[i]);
  }
  return lower;
}

// ---- charts --------------------------------------------------------------------------------

const WINDOW = 150;  // points kept per chart
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];

class LiveChart {
  constructor(el, names) {
    this.el = el;
    this.names = names;
    this.data = [[], ...names.map(() => [])];
    const series = [{}, ...names.map((n, i) => ({label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true}))];
    // Time on x in seconds; at least a 10 s span, so that one point is not stretched over
    // a range of years.
    const x = {time: true, range: (u, lo, hi) => [Math.min(lo, hi - 10), hi]};
    this.plot = new uPlot({width: el.clientWidth || 560, height: 200, series, scales: {x}, axes: [{}, {size: 60}], legend: {live: false}}, this.data, el);
    el.dataset.points = "0";
  }
  push(t, values) {
    this.data[0].push(t);
    this.names.forEach((n, i) => this.data[i + 1].push(values[n] ?? null));
    if (this.data[0].length > WINDOW) this.data.forEach((s) => s.shift());
    this.plot.setData(this.data);
    // Read by the browser test.
    this.el.dataset.points = String(this.data[0].length);
    this.el.dataset.last = JSON.stringify(values);
  }
}

// ---- overview ------------------------------------------------------------------------------

function overviewCards(s, prev, dt, health) {
  const d = (name, match) => prev ? (total(s, name, match) - total(prev, name, match)) : null;
  const recs = d("tastemaker_recommendations_total");
  const share = (path) => recs ? d("tastemaker_recommendations_total", (l) => l.path === path) / recs : null;
  const lag = total(s, "tastemaker_stream_lag_events");
  const fb = (x) => buckets(x, "tastemaker_feature_freshness_seconds");
  const fresh = prev ? quantile(fb(s), fb(prev), 0.5) : null;
  const cards = [
    ["events accepted /s", prev ? fmt(d("tastemaker_events_accepted_total") / dt) : "…"],
    ["events applied /s", prev ? fmt(d("tastemaker_events_processed_total") / dt) : "…"],
    ["recommend /s", prev ? fmt(d("tastemaker_request_seconds_count", (l) => l.endpoint === "recommend") / dt) : "…"],
    ["degraded share", recs ? fmt(100 * share("degraded")) + " %" : "–"],
    ["cache hit rate", recs ? fmt(100 * share("cached")) + " %" : "–"],
    ["stream lag (events)", fmt(lag, 0)],
    ["freshness p50", fresh == null ? "–" : fmt(fresh, 2) + " s"],
    ["health", health ? '<span class="' + (health.status === "ok" ? "ok" : "bad") + '">' + esc(health.status) + "</span>" : "…"],
  ];
  $("#cards").innerHTML = cards.map(([k, v]) => '<div class="card"><div>' + esc(k) + "</div><b>" + v + "</b></div>").join("");
}

function overviewTables(s, summary, health) {
  const fb = byLabel(s, "tastemaker_stage_fallbacks_total", "stage");
  const over = byLabel(s, "tastemaker_stage_overruns_total", "stage");
  const stages = [...new Set([...Object.keys(fb), ...Object.keys(over)])].sort();
  table($("#fallbacks"), ["stage", "fallbacks", "overruns"], stages.map((st) => [esc(st), fmt(fb[st] || 0, 0), fmt(over[st] || 0, 0)]));
  const lag = byLabel(s, "tastemaker_stream_lag_events", "partition");
  table($("#lag"), ["partition", "events behind"], Object.keys(lag).sort((a, b) => a - b).map((p) => [esc(p), fmt(lag[p], 0)]));
  const jobs = s.filter(([n]) => n === "tastemaker_job_runs_total");
  table($("#jobs"), ["job", "outcome", "runs"], jobs.map(([, l, v]) => [esc(l.job), '<span class="' + (l.outcome === "failed" ? "bad" : "") + '">' + esc(l.outcome) + "</span>", fmt(v, 0)]));
  if (health) {
    table($("#health"), ["", ""], [["status", esc(health.status)], ["log end offset", fmt(health.log_end_offset, 0)], ["items", fmt(health.items, 0)],
      ["reasons", health.reasons.length ? health.reasons.map(esc).join("<br>") : "none"]]);
  }
  const art = summary.artifacts;
  const names = [...new Set([...Object.keys(art.current), ...Object.keys(art.served)])].sort();
  table($("#artifacts"), ["artifact", "current", "served here", "built", "events read", "rows", "metrics", "manifest"], names.map((n) => {
    const m = art.current[n];
    return [esc(n), m ? fmt(m.version, 0) : "–", art.served[n] == null ? "–" : fmt(art.served[n], 0), m ? when(m.created_at) : "–",
      m ? fmt(m.events_read, 0) : "–", m ? esc(JSON.stringify(m.rows)) : "–", m ? esc(JSON.stringify(m.metrics)) : "–",
      m ? "<details><summary>json</summary><pre>" + esc(JSON.stringify(m, null, 1)) + "</pre></details>" : "–"];
  }));
}

const STAGES = ["features", "retrieve", "rank"];

async function overview() {
  const every = Number(new URLSearchParams(location.search).get("every") || 2);
  $("#every").textContent = every;
  let prev = null, prevT = 0, charts = null, lagChart = null;
  async function tick() {
    let summary, health = null;
    try {
      [summary, health] = await Promise.all([getJSON("/console/api/summary"), getJSON("/healthz")]);
    } catch (e) {
      status(e.message, true);
      return;
    }
    const s = summary.samples, t = summary.time, dt = prev ? t - prevT : 0;
    overviewCards(s, prev, dt, health);
    overviewTables(s, summary, health);
    charts = charts || {
      ingest: new LiveChart($("#chart-ingest"), ["accepted", "applied"]),
      latency: new LiveChart($("#chart-latency"), ["request", ...STAGES]),
      freshness: new LiveChart($("#chart-freshness"), ["p50", "p95"]),
    };
    const lag = {};
    for (const [p, v] of Object.entries(byLabel(s, "tastemaker_stream_lag_events", "partition"))) lag["partition " + p] = v;
    const partitions = Object.keys(lag).sort();
    if (!lagChart || lagChart.names.join() !== partitions.join()) {
      $("#chart-lag").innerHTML = "";
      lagChart = new LiveChart($("#chart-lag"), partitions);
    }
    lagChart.push(t, lag);
    if (prev) {
      const d = (name) => (total(s, name) - total(prev, name)) / dt;
      charts.ingest.push(t, {accepted: d("tastemaker_events_accepted_total"), applied: d("tastemaker_events_processed_total")});
      const ms = (v) => v == null ? null : v * 1000;
      const rec = (l) => l.endpoint === "recommend";
      const lat = {request: ms(quantile(buckets(s, "tastemaker_request_seconds", rec), buckets(prev, "tastemaker_request_seconds", rec), 0.95))};
      for (const st of STAGES) {
        const m = (l) => l.stage === st;
        lat[st] = ms(quantile(buckets(s, "tastemaker_recommend_stage_seconds", m), buckets(prev, "tastemaker_recommend_stage_seconds", m), 0.95));
      }
      charts.latency.push(t, lat);
      const fNow = buckets(s, "tastemaker_feature_freshness_seconds"), fPrev = buckets(prev, "tastemaker_feature_freshness_seconds");
      charts.freshness.push(t, {p50: quantile(fNow, fPrev, 0.5), p95: quantile(fNow, fPrev, 0.95)});
    }
    prev = s;
    prevT = t;
    status("updated " + new Date().toLocaleTimeString(), false);
    rendered();
  }
  await tick();
  setInterval(tick, every * 1000);
}

// ---- user inspector ------------------------------------------------------------------------

function cellValue(v) {
  const text = typeof v === "string" ? v : JSON.stringify(v);
  return text.length > 300 ? "<details><summary>" + esc(text.slice(0, 120)) + " …</summary><code>" + esc(text) + "</code></details>" : "<code>" + esc(text) + "</code>";
}

function featuresHTML(features) {
  const families = Object.keys(features);
  if (!families.length) return '<p class="none">no stored features: the stream has applied no event of this user (or they were erased).</p>';
  return families.map((fam) => "<h3>" + esc(fam) + '</h3><table class="features">' +
    "<tr><th>column</th><th>value</th><th>time</th></tr>" +
    Object.entries(features[fam]).map(([col, c]) => "<tr><td>" + esc(col) + "</td><td>" + cellValue(c.value) + "</td><td>" + when(c.ts) + "</td></tr>").join("") +
    "</table>").join("");
}

function recsHTML(rec) {
  const head = "<p>request " + esc(rec.request_id || "–") + (rec.degraded ? ' · <span class="bad">degraded</span>' : "") +
    (rec.fallbacks.length ? " · fallbacks: " + rec.fallbacks.map(esc).join(", ") : "") + (rec.cached ? " · cached" : "") + "</p>";
  const rows = rec.items.map((it, i) => "<tr><td>" + (i + 1) + '</td><td><a href="/console/items?item_id=' + encodeURIComponent(it.item_id) + '">' + esc(it.item_id) + "</a></td><td>" +
    fmt(it.score, 4) + "</td><td>" + it.sources.map(esc).join(", ") + "</td><td>" +
    (it.because ? it.because.map((b) => esc(b.feature) + " " + (b.contribution >= 0 ? "+" : "") + fmt(b.contribution, 3)).join("<br>") : "–") + "</td></tr>").join("");
  return head + '<table id="recs"><tr><th>#</th><th>item</th><th>score</th><th>sources</th><th>because</th></tr>' + rows + "</table>";
}

async function users() {
  const q = new URLSearchParams(location.search);
  if (q.get("explain")) $("select[name=explain]").value = q.get("explain");
  const user = q.get("user_id");
  if (!user) { rendered(); return; }
  const api = new URLSearchParams();
  for (const k of ["n", "region", "device", "filters", "explain"]) if (q.get(k)) api.set(k, q.get(k));
  let data;
  try {
    data = await getJSON("/console/api/users/" + encodeURIComponent(user) + "?" + api);
  } catch (e) {
    $("#user-result").innerHTML = '<p class="bad">' + esc(e.message) + "</p>";
    status("error", true);
    rendered();
    return;
  }
  const session = data.session;
  $("#user-result").innerHTML =
    '<div class="two"><div><h2>Stored features by family</h2><div id="features">' + featuresHTML(data.features) + "</div></div>" +
    '<div><h2>Recommendations</h2><div id="recommendations">' + recsHTML(data.recommendations) + "</div>" +
    "<h2>Current session and recent events</h2>" +
    (Object.keys(session).length ? "<table>" + Object.entries(session).map(([c, v]) => "<tr><td>" + esc(c) + "</td><td>" + cellValue(v.value) + "</td><td>" + when(v.ts) + "</td></tr>").join("") + "</table>"
      : '<p class="none">no current session.</p>') +
    '<p class="note">Recent events are shown as the store keeps them: the session family above (its items and counts) and the profile\'s recent items; the store keeps no per-user event list.</p></div></div>';
  status("loaded " + new Date().toLocaleTimeString(), false);
  rendered();
}

// ---- item inspector ------------------------------------------------------------------------

async function items() {
  const q = new URLSearchParams(location.search);
  const item = q.get("item_id"), every = Number(q.get("every") || 2);
  if (!item) { rendered(); return; }
  let chart = null;
  async function tick() {
    let data;
    try {
      data = await getJSON("/console/api/items/" + encodeURIComponent(item));
    } catch (e) {
      $("#item-result").innerHTML = '<p class="bad">' + esc(e.message) + "</p>";
      status("error", true);
      return false;
    }
    if (!chart) {
      $("#item-result").innerHTML =
        '<div class="two"><div><h2>Attributes</h2><table id="attributes"></table><h2>Popularity</h2><table id="popularity"></table>' +
        '<figure><figcaption>Rank in the "all" and "trending" top lists (1: the most popular), sampled every ' + every + ' s while this page is open</figcaption><div id="chart-popularity" class="chart"></div></figure></div>' +
        '<div><h2>Similar items by retriever</h2><div id="similar"></div></div></div>';
      chart = new LiveChart($("#chart-popularity"), ["all", "trending"]);
    }
    const a = data.attributes;
    table($("#attributes"), ["", ""], Object.entries(a).map(([k, v]) => [esc(k), k === "added_ts" ? (v == null ? "base catalog" : when(v)) : esc(v)]));
    table($("#popularity"), ["list", "rank", "log score"], Object.entries(data.popularity).map(([l, p]) => [esc(l), fmt(p.rank, 0) + " of " + fmt(p.of, 0), fmt(p.score, 3)]));
    chart.push(data.time, {all: data.popularity.all?.rank, trending: data.popularity.trending?.rank});
    const bySource = {};
    for (const it of data.similar) for (const src of it.sources) (bySource[src] = bySource[src] || []).push(it);
    for (const src in bySource) bySource[src] = bySource[src].slice(0, 10);
    $("#similar").innerHTML = Object.keys(bySource).length ? Object.entries(bySource).map(([src, its]) => "<h3>" + esc(src) + "</h3><table><tr><th>item</th><th>score (all sources)</th></tr>" +
      its.map((it) => '<tr><td><a href="/console/items?item_id=' + encodeURIComponent(it.item_id) + '">' + esc(it.item_id) + "</a></td><td>" + fmt(it.score, 3) + "</td></tr>").join("") + "</table>").join("")
      : '<p class="none">no similar items.</p>';
    status("updated " + new Date().toLocaleTimeString(), false);
    rendered();
    return true;
  }
  if (await tick()) setInterval(tick, every * 1000);
}

const PAGES = {console: overview, users, items, experiments: async () => rendered()};
PAGES[document.body.dataset.page]().catch((e) => status(String(e), true));
