"""The status page at ``/`` of the metrics listener: one HTML document, no external assets.

The page carries the snapshot it was rendered from (as JSON in a script
element) and draws itself from it at once; then a small script fetches
``stats`` every two seconds and draws again.  No build step, no library: the
charts are inline SVG polylines of each worker's RSS against ``--max-rss``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render"]


def render(stats: dict[str, Any]) -> str:
    data = json.dumps(stats).replace("<", "\\u003c").replace("&", "\\u0026")
    return _TEMPLATE.replace("@@DATA@@", data)


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsgipool status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 .2em; }
h2 { font-size: 15px; margin: 1.4em 0 .4em; }
.sub { color: #5b6570; margin-bottom: 1em; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; }
.card { background: #fff; border: 1px solid #dde2e7; border-radius: 6px; padding: .5em .9em;
        min-width: 8em; }
.card b { display: block; font-size: 20px; }
.card span { color: #5b6570; font-size: 12px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde2e7; }
th, td { padding: .3em .7em; border-bottom: 1px solid #eef1f4; text-align: right; }
th { background: #f1f4f7; font-weight: 600; }
td.l, th.l { text-align: left; }
.ready { color: #1a7f37; } .starting { color: #9a6700; } .draining { color: #8250df; }
.bad { color: #cf222e; }
svg.rss-chart { display: block; }
.muted { color: #8c959f; }
</style>
</head>
<body>
<h1>wsgipool status</h1>
<div class="sub" id="sub"></div>
<div class="cards" id="cards"></div>
<h2>Workers</h2>
<table id="workers"><thead><tr>
<th>slot</th><th>pid</th><th class="l">state</th><th>age</th><th>RSS</th>
<th title="memory only this worker maps">USS</th>
<th class="l">RSS, last <span id="span">5m</span></th><th>served</th><th>busy / threads</th>
</tr></thead><tbody></tbody></table>
<h2>Recent worker exits</h2>
<table id="exits"><thead><tr>
<th class="l">when</th><th>pid</th><th class="l">reason</th><th>RSS</th><th>served</th>
<th>age</th><th class="l">exit</th>
</tr></thead><tbody></tbody></table>
<h2>Request paths that grew the workers most</h2>
<table id="paths"><thead><tr>
<th class="l">path</th><th>RSS growth</th><th>requests</th><th>per request</th>
</tr></thead><tbody></tbody></table>
<script type="application/json" id="initial">@@DATA@@</script>
<script>
"use strict";
const MIB = 1048576;
function mib(n) { return n ? (n / MIB).toFixed(1) + " MiB" : "-"; }
function dur(s) {
  if (s < 60) return s.toFixed(0) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function chart(w, s, span) {
  const W = 260, H = 44;
  const svg = svgEl("svg", {class: "rss-chart", width: W, height: H, "data-pid": w.pid,
                            viewBox: "0 0 " + W + " " + H, role: "img"});
  const points = w.rss_history.filter(p => s.at - p[0] <= span);
  const peak = Math.max(s.max_rss_hard || 0, s.max_rss || 0,
                        ...points.map(p => p[1]), w.rss, 1) * 1.15;
  const x = t => W - (s.at - t) / span * W;
  const y = v => H - 2 - v / peak * (H - 4);
  svg.appendChild(svgEl("rect", {x: 0, y: 0, width: W, height: H, fill: "#f6f8fa"}));
  const limits = [[s.max_rss, "#bf8700", "max-rss"], [s.max_rss_hard, "#cf222e", "hard"]];
  for (const [limit, colour, name] of limits) {
    if (!limit) continue;
    svg.appendChild(svgEl("line", {x1: 0, x2: W, y1: y(limit), y2: y(limit),
      stroke: colour, "stroke-dasharray": "4 3", "stroke-width": 1}));
    const label = svgEl("text", {x: 3, y: y(limit) + 10, fill: colour, "font-size": 9});
    label.textContent = name + " " + mib(limit);
    svg.appendChild(label);
  }
  if (points.length) {
    const coords = points.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    if (coords.length === 1) coords.unshift((W - 4) + "," + coords[0].split(",")[1]);
    svg.appendChild(svgEl("polyline", {points: coords.join(" "), fill: "none",
      stroke: "#0969da", "stroke-width": 1.5}));
  }
  const title = svgEl("title", {});
  const against = s.max_rss ? " against --max-rss " + mib(s.max_rss) : "";
  title.textContent = "RSS of worker " + w.pid + " over the last " + dur(span) + against;
  svg.appendChild(title);
  return svg;
}
function card(value, label) {
  const c = el("div", {class: "card"});
  c.appendChild(el("b", {}, String(value)));
  c.appendChild(el("span", {}, label));
  return c;
}
function draw(s) {
  document.getElementById("sub").textContent =
    "wsgipool " + s.version + " (Python " + s.python + ", aiohttp " + s.aiohttp + "), " +
    s.mode + ", up " + dur(s.at - s.started_at) + (s.stopping ? ", SHUTTING DOWN" : "") +
    " - updated " + new Date(s.at * 1000).toLocaleTimeString();
  const ready = s.workers.filter(w => w.state === "ready").length;
  const total = s.requests.reduce((a, r) => a + r.count, 0);
  const cards = document.getElementById("cards");
  cards.replaceChildren(
    card(s.ready ? "ready" : "NOT READY", "readiness"),
    card(ready + " / " + s.workers_target, "workers ready / target"),
    card(s.request_rate.toFixed(1), "requests/s (last 10 s)"),
    card(total, "requests answered"),
    card(s.queue_depth + " / " + s.queue_size, "queue depth / capacity"),
    card(s.threads_busy + " / " + s.threads_total, "threads busy / ready"),
    card(Object.values(s.rejected).reduce((a, b) => a + b, 0), "503s (server)"),
    card(mib(s.main_rss), "main process RSS"));
  if (!s.ready) cards.firstChild.classList.add("bad");
  // One time axis for every chart: the oldest sample shown, between 1 and 5 minutes.
  const oldest = Math.min(s.at, ...s.workers.flatMap(w => w.rss_history.map(p => p[0])));
  const span = Math.min(300, Math.max(60, s.at - oldest));
  document.getElementById("span").textContent = dur(span);
  const rows = document.querySelector("#workers tbody");
  rows.replaceChildren();
  for (const w of s.workers) {
    const tr = el("tr", {"data-pid": w.pid, class: "worker"});
    tr.appendChild(el("td", {}, w.slot));
    tr.appendChild(el("td", {class: "pid"}, w.pid));
    tr.appendChild(el("td", {class: "l " + w.state},
      w.state + (w.recycle_reason ? " (" + w.recycle_reason + ")" : "")));
    tr.appendChild(el("td", {}, dur(w.age)));
    tr.appendChild(el("td", {}, mib(w.rss)));
    tr.appendChild(el("td", {class: "uss"}, mib(w.uss)));
    const cell = el("td", {class: "l"});
    cell.appendChild(chart(w, s, span));
    tr.appendChild(cell);
    tr.appendChild(el("td", {}, w.served));
    tr.appendChild(el("td", {}, w.busy + " / " + w.threads));
    rows.appendChild(tr);
  }
  if (!s.workers.length) {
    const tr = el("tr"); tr.appendChild(el("td", {colspan: 9, class: "l muted"},
      s.mode === "threads" ? "threads mode: no worker processes" : "no live worker"));
    rows.appendChild(tr);
  }
  const exits = document.querySelector("#exits tbody");
  exits.replaceChildren();
  for (const e of s.recent_exits.slice().reverse().slice(0, 10)) {
    const tr = el("tr");
    tr.appendChild(el("td", {class: "l"}, new Date(e.at * 1000).toLocaleTimeString()));
    tr.appendChild(el("td", {}, e.pid));
    const bad = e.reason === "crash" || e.reason === "signal" || e.reason === "max_rss_hard";
    tr.appendChild(el("td", {class: "l" + (bad ? " bad" : "")}, e.reason));
    tr.appendChild(el("td", {}, mib(e.rss)));
    tr.appendChild(el("td", {}, e.served));
    tr.appendChild(el("td", {}, dur(e.age)));
    tr.appendChild(el("td", {class: "l"}, e.detail));
    exits.appendChild(tr);
  }
  if (!s.recent_exits.length) {
    const tr = el("tr"); tr.appendChild(el("td", {colspan: 7, class: "l muted"}, "none yet"));
    exits.appendChild(tr);
  }
  const paths = document.querySelector("#paths tbody");
  paths.replaceChildren();
  const grew = s.paths.filter(p => p.grown_kib > 0).slice(0, 10);
  for (const p of grew) {
    const tr = el("tr", {class: "path"});
    tr.appendChild(el("td", {class: "l"}, p.path));
    tr.appendChild(el("td", {}, mib(p.grown_kib * 1024)));
    tr.appendChild(el("td", {}, p.requests));
    tr.appendChild(el("td", {}, (p.grown_kib / Math.max(1, p.requests)).toFixed(1) + " KiB"));
    paths.appendChild(tr);
  }
  if (!grew.length) {
    const tr = el("tr"); tr.appendChild(el("td", {colspan: 4, class: "l muted"},
      s.mode === "threads" ? "threads mode: not measured" : "no growth measured yet"));
    paths.appendChild(tr);
  }
}
draw(JSON.parse(document.getElementById("initial").textContent));
async function refresh() {
  try {
    const response = await fetch("stats", {cache: "no-store"});
    if (response.ok) draw(await response.json());
  } catch (e) { /* the server may be restarting: try again */ }
}
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
