"""The status page (``GET /``): one self-contained HTML document, read-only.

No CDN, no build step, no outside request: the style and script are inline, and the
script asks ``/status.json`` (same origin, so the browser sends the token it was given
for the page) every :data:`REFRESH_MS`. Every value is put in with ``textContent``,
never as HTML: a file name may hold ``<script>``.
"""

from __future__ import annotations

REFRESH_MS = 2000

# Inline style and script only; nothing may be fetched but the page's own JSON.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ingestd status</title>
<style>
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --line: #d0d7de; --dim: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 10px 18px; display: flex; gap: 16px;
  align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 17px; margin: 0; }
header .dim { color: #c0c6cc; }
main { padding: 12px 18px; max-width: 1200px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  margin: 0 0 12px; padding: 10px 14px; }
h2 { font-size: 15px; margin: 0 0 8px; }
.totals { display: flex; gap: 10px; flex-wrap: wrap; }
.total { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; min-width: 92px; }
.total b { display: block; font-size: 20px; }
.total span { color: var(--dim); }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: 4px 8px 4px 0; border-bottom: 1px solid #eaeef2;
  vertical-align: top; }
th { color: var(--dim); font-weight: 600; }
.bar { width: 220px; height: 14px; background: #eaeef2; border-radius: 7px; overflow: hidden; }
.fill { height: 100%; background: #2f81f7; transition: width .4s; }
code { background: #eff1f3; padding: 1px 5px; border-radius: 4px; user-select: all; }
.state-ok { color: var(--ok); font-weight: 600; }
.state-bad { color: var(--bad); font-weight: 600; }
.state-warn { color: var(--warn); font-weight: 600; }
.more, .empty { color: var(--dim); margin: 6px 0 0; }
#problems { border-color: var(--bad); }
#problems li { color: var(--bad); }
#offline { display: none; background: #fff8c5; border-color: #d4a72c; }
.name { word-break: break-all; }
</style>
</head>
<body>
<header>
  <h1>ingestd</h1>
  <span id="overall">loading...</span>
  <span class="dim" id="meta"></span>
</header>
<main>
  <section id="offline"></section>
  <section id="problems" hidden><h2>Problems</h2><ul id="problem-list"></ul></section>
  <section><h2>Totals</h2><div class="totals" id="totals"></div></section>
  <section><h2>Active uploads</h2><div id="active"></div></section>
  <section><h2>Waiting files</h2><div id="waiting"></div></section>
  <section><h2>Failures</h2><div id="failed"></div></section>
  <section><h2>Health</h2><div id="health"></div></section>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const STATES = ["waiting", "queued", "creating", "uploading", "confirming", "done", "failed",
  "skipped"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
}
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "never";
}
function table(headings, rows) {
  const head = el("tr", {}, ...headings.map((h) => el("th", {text: h})));
  const body = rows.map((cells) => el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? el("td", {}, c) : el("td", {text: c}))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}
function group(id, data, headings, row, emptyText) {
  const box = document.getElementById(id);
  const nodes = [];
  if (data.items.length) nodes.push(table(headings, data.items.map(row)));
  else nodes.push(el("p", {class: "empty", text: emptyText}));
  if (data.more) nodes.push(el("p", {class: "more", text: "and " + data.more + " more"}));
  box.replaceChildren(...nodes);
}
function stateClass(state) {
  return state === "ok" ? "state-ok" : (state === "unknown" ? "state-warn" : "state-bad");
}

function progress(item) {
  const bar = el("div", {class: "bar", role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": String(item.percent), "data-job": String(item.job)});
  bar.append(el("div", {class: "fill", style: "width: " + item.percent + "%"}));
  return el("div", {}, bar, el("span", {text: item.percent + "% of " + size(item.size)}));
}
function activeRow(item) {
  let note = item.state;
  if (item.next_try_s) note += ", next try in " + duration(item.next_try_s);
  if (item.attempts) note += ", attempt " + item.attempts;
  return [el("span", {class: "name", text: item.name}), note, progress(item),
    item.rate_bps ? size(item.rate_bps) + "/s" : "",
    item.eta_s !== undefined ? duration(item.eta_s) : ""];
}
function waitingRow(item) {
  return [el("span", {class: "name", text: item.name}), size(item.size), item.why,
    duration(item.waiting_s)];
}
function failedRow(item) {
  const reason = el("div", {}, el("b", {text: item.reason}));
  if (item.detail) reason.append(el("div", {text: item.detail}));
  return [el("span", {class: "name", text: item.name}), reason, String(item.attempts),
    el("code", {class: "retry", text: item.retry})];
}
function health(h) {
  const rows = [["server", h.server.state, h.server.detail]];
  rows.push(["ledger" + (h.ledger.path ? " " + h.ledger.path : ""), h.ledger.state,
    h.ledger.detail]);
  for (const f of h.folders) {
    const free = f.free_bytes === null ? "" : ", " + size(f.free_bytes) + " free";
    rows.push([f.folder + (f.path ? " " + f.path : ""), f.state, f.detail + free]);
  }
  document.getElementById("health").replaceChildren(table(["part", "state", "detail"],
    rows.map(([part, state, detail]) => [part, el("span", {class: stateClass(state),
      text: state}), detail])));
}

function render(s) {
  document.getElementById("offline").style.display = "none";
  const overall = document.getElementById("overall");
  overall.textContent = (s.healthy ? "healthy" : "unhealthy") + (s.paused ? ", PAUSED" : "");
  overall.className = s.healthy ? "state-ok" : "state-bad";
  document.getElementById("meta").textContent = "version " + s.version + ", " + s.mode +
    ", last upload " + when(s.last_upload_at) + ", updated " + when(s.generated_at);
  const problems = document.getElementById("problems");
  problems.hidden = !s.problems.length;
  document.getElementById("problem-list").replaceChildren(
    ...s.problems.map((p) => el("li", {text: p})));
  document.getElementById("totals").replaceChildren(...STATES.map((state) =>
    el("div", {class: "total", id: "total-" + state},
      el("b", {text: String(s.totals[state] || 0)}), el("span", {text: state}))));
  group("active", s.active, ["file", "state", "progress", "rate", "ETA"], activeRow,
    "nothing is being uploaded");
  group("waiting", s.waiting, ["file", "size", "why", "for"], waitingRow, "no file waits");
  group("failed", s.failed, ["file", "reason", "attempts", "to try again"], failedRow,
    "no failures");
  if (s.failed.items.length > 1 || s.failed.more) {
    document.getElementById("failed").append(el("p", {class: "more"},
      "all of them: ", el("code", {text: "ingestd retry --failed"})));
  }
  health(s.health);
  document.body.dataset.updated = String(s.generated_at);
}

async function refresh() {
  try {
    // Relative to the page (a proxy may serve it under a path), but without the user and
    // password a typed URL may hold: fetch() refuses a URL with credentials in it.
    const url = new URL("status.json", location.href);
    url.username = "";
    url.password = "";
    const answer = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (!answer.ok) throw new Error("the daemon answered " + answer.status);
    render(await answer.json());
  } catch (error) {
    const box = document.getElementById("offline");
    box.textContent = "Cannot read the daemon's status (" + error.message +
      "); the figures below may be old.";
    box.style.display = "block";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_MS))
