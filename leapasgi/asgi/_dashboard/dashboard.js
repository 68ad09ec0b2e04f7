// The leapasgi dashboard: reads /dashboard/events with fetch (EventSource cannot send the
// admin key as a header) and draws each snapshot; no libraries, no content shown.
"use strict";

const KEY = "leapasgi.admin-key";
const RETRY_MS = 2000;
const $ = (selector) => document.querySelector(selector);
const rows = new Map();
let controller = null;
// Snapshots drawn so far (on the board as data-snapshots: what was drawn from the stream).
let drawn = 0;

function key() { return sessionStorage.getItem(KEY); }
function auth() { return { Authorization: "Bearer " + key() }; }
function setState(text) { $("#state").textContent = text; }
function announce(text) { $("#announce").textContent = text; }

function showLogin(message) {
  $("#board").hidden = true;
  $("#login").hidden = false;
  setState(message);
  $("#key").focus();
}

async function connect() {
  if (!key()) { showLogin("Enter the admin key to connect."); return; }
  $("#login").hidden = true;
  $("#board").hidden = false;
  controller = new AbortController();
  try {
    const response = await fetch("events", { headers: auth(), signal: controller.signal, cache: "no-store" });
    if ([401, 403, 404].includes(response.status)) {
      sessionStorage.removeItem(KEY);
      showLogin("The gateway refused that key (" + response.status + ").");
      return;
    }
    if (!response.ok || !response.body) throw new Error("status " + response.status);
    setState("Connected: live.");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
  }
  setState("Disconnected; reconnecting…");
  setTimeout(connect, RETRY_MS);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.append(td);
  return td;
}

function spark(kind, label) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark " + kind);
  svg.setAttribute("viewBox", "0 0 120 28");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const title = document.createElementNS(svg.namespaceURI, "title");
  title.textContent = label;
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  svg.append(title, line);
  return svg;
}

function draw(svg, values, unit) {
  const numbers = values.map((v) => (v == null ? 0 : v));
  const top = Math.max(1, ...numbers);
  const step = 120 / Math.max(1, numbers.length - 1);
  const points = numbers.map((v, i) => (i * step).toFixed(1) + "," + (27 - (v / top) * 26).toFixed(1));
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
  const last = values.length ? values[values.length - 1] : null;
  svg.setAttribute("aria-label", svg.querySelector("title").textContent + ": now " + (last == null ? "none" : last + unit) + ", peak " + top + unit);
}

function providerRow(name) {
  const tr = document.createElement("tr");
  tr.dataset.provider = name;
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = name;
  tr.append(th);
  const cells = {};
  for (const field of ["status", "health", "breaker", "load", "requests", "errors", "latency"]) {
    cells[field] = cell(tr, "", ["requests", "errors", "latency", "load"].includes(field) ? "num" : "");
  }
  const plots = {
    rate: spark("rate", name + " requests per second"),
    errors: spark("errors", name + " errors per second"),
    p95: spark("p95", name + " latency p95 in ms"),
  };
  for (const svg of Object.values(plots)) cell(tr, "").append(svg);
  const button = document.createElement("button");
  button.type = "button";
  button.addEventListener("click", () => toggle(name, button.dataset.next));
  cell(tr, "").append(button);
  $("#providers tbody").append(tr);
  const entry = { tr, cells, plots, button };
  rows.set(name, entry);
  return entry;
}

const tone = { active: "ok", healthy: "ok", closed: "ok", maintenance: "warn", degraded: "warn", half_open: "warn", inactive: "bad", unhealthy: "bad", open: "bad" };

function setWord(td, word) {
  td.textContent = word;
  td.className = tone[word] || "";
}

function showStatus(provider) {
  const entry = rows.get(provider.name) || providerRow(provider.name);
  const cells = entry.cells;
  setWord(cells.status, provider.status);
  entry.tr.dataset.status = provider.status;
  const next = provider.status === "maintenance" ? "active" : "maintenance";
  entry.button.dataset.next = next;
  entry.button.textContent = next === "active" ? "Put " + provider.name + " back in service" : "Put " + provider.name + " in maintenance";
  return entry;
}

function fmt(value) { return value == null ? "–" : String(value); }

function render(snap) {
  $("#board").dataset.snapshots = String(++drawn);
  for (const p of snap.providers) {
    const entry = showStatus(p);
    const c = entry.cells;
    setWord(c.health, p.health);
    setWord(c.breaker, p.breaker);
    c.load.textContent = p.in_flight + " / " + (p.limit == null ? "∞" : p.limit) + (p.waiting ? " (" + p.waiting + " waiting)" : "");
    c.requests.textContent = p.requests;
    c.errors.textContent = p.errors;
    c.latency.textContent = fmt(p.p50_ms) + " / " + fmt(p.p95_ms);
    const series = snap.series[p.name];
    if (series) {
      draw(entry.plots.rate, series.rate, "/s");
      draw(entry.plots.errors, series.errors, "/s");
      draw(entry.plots.p95, series.p95, " ms");
    } else {
      for (const svg of Object.values(entry.plots)) draw(svg, [0, 0], "");
    }
  }
  const cache = snap.cache;
  $("#cache").textContent = cache == null ? "Cache: off." :
    "Cache hit rate: " + (cache.hit_rate == null ? "no lookups yet" : (cache.hit_rate * 100).toFixed(1) + "%") +
    " (" + (cache.lookups.hit || 0) + " hits, " + (cache.lookups.miss || 0) + " misses).";
  const spend = $("#spend tbody");
  spend.replaceChildren();
  for (const [tenant, usd] of Object.entries(snap.spend)) {
    const tr = document.createElement("tr");
    cell(tr, tenant);
    cell(tr, "$" + usd.toFixed(6), "num");
    spend.append(tr);
  }
  $("#spend").hidden = Object.keys(snap.spend).length === 0;
  const requests = $("#requests tbody");
  requests.replaceChildren();
  for (const r of snap.requests) {
    const tr = document.createElement("tr");
    cell(tr, new Date(r.at * 1000).toLocaleTimeString());
    cell(tr, r.id);
    cell(tr, r.model || "–");
    setWord(cell(tr, ""), "");
    tr.lastChild.textContent = r.status + (r.error ? " " + r.error : "") + (r.cache ? " cache " + r.cache : "");
    tr.lastChild.className = r.status >= 400 || r.error ? "bad" : "ok";
    cell(tr, r.ms, "num");
    cell(tr, r.overhead_ms, "num");
    const trail = r.attempts.map((a) => a.provider + "/" + a.model + ": " + (a.skipped ? "skipped " : "") + a.outcome + (a.status ? " (" + a.status + ")" : "") + (a.skipped ? "" : " " + a.ms + " ms"));
    cell(tr, trail.join(" → ") || "(no attempt)", "trail");
    requests.append(tr);
  }
}

async function toggle(name, status) {
  const response = await fetch("../v1/providers/" + encodeURIComponent(name) + "/status", {
    method: "PUT",
    headers: { ...auth(), "Content-Type": "application/json" },
    body: JSON.stringify({ status, reason: "set from the dashboard" }),
  });
  if (!response.ok) { announce("Could not set " + name + " to " + status + " (" + response.status + ")."); return; }
  const provider = await response.json();
  showStatus(provider);
  announce(name + " is now " + provider.status + ".");
}

async function checkHealth() {
  const button = $("#health");
  button.disabled = true;
  announce("Checking every provider…");
  try {
    const response = await fetch("../v1/providers/health", { method: "POST", headers: auth() });
    if (!response.ok) { announce("Health checks failed (" + response.status + ")."); return; }
    const results = (await response.json()).data;
    announce("Health checks: " + results.map((r) => r.provider + " " + (r.ok ? "ok" : "failed")).join(", ") + ".");
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#key").value);
    $("#key").value = "";
    connect();
  });
  $("#forget").addEventListener("click", () => {
    if (controller) controller.abort();
    sessionStorage.removeItem(KEY);
    showLogin("Key forgotten.");
  });
  $("#health").addEventListener("click", checkHealth);
  connect();
});
