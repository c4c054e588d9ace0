"""The ops page: ``GET /ui``, one self-contained HTML page (inline CSS and
vanilla JS, nothing fetched from elsewhere, no build step), and the JSON it
polls for queue-level numbers, ``GET /v1/ops/summary``.

The page reads everything else through the ordinary tenant API with the key
the user typed (kept in ``localStorage``): ``GET /v1/jobs``,
``GET /v1/webhooks/dead-letters``, ``POST /v1/webhooks/events/{id}/redeliver``
and ``GET /v1/jobs/{id}/deliveries``. Strings that callers control (custom ids,
metadata, errors, model names) only ever reach the page through
``textContent``; a Content-Security-Policy that admits just this page's own
script and style backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from jobs.domain import batches
from jobs.domain.statuses import JobStatus
from jobs.http.deps import Svc, Tenant
from jobs.observe import metrics
from jobs.services import Services

__all__ = ["OpsSummary", "router", "summary"]

router = APIRouter()

# How far back the summary looks in the tenant's job index for batches to show.
RECENT_JOBS_FOR_BATCHES = 200
MAX_BATCHES = 8


class OpsSummary(BaseModel):
    tenant: str
    time: float
    queue_depth: int
    """Jobs accepted and waiting for dispatch, all tenants."""
    queue_depth_tenant: int
    """The caller's share of ``queue_depth``."""
    in_flight: dict[str, int]
    """Jobs dispatched and not yet ended, by model label (as in ``/metrics``)."""
    in_flight_total: int
    oldest_in_flight_s: float | None
    jobs_by_status: dict[str, int]
    """Jobs stored, by status, all tenants."""
    batches: list[dict[str, Any]]
    """The caller's batches among its most recent jobs, newest first, as
    ``GET /v1/batches/{id}`` returns them."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def summary(s: Services, tenant: str) -> OpsSummary:
    """The numbers ``jobs.metrics.refresh_queue_gauges`` exports, from the same
    Redis keys, plus the tenant's recent batches."""
    snap = await metrics.queue_snapshot(s.redis, s.store.keys)
    mine = sum(n for lane, n in snap.lane_depths.items() if lane.split("|", 1)[0] == tenant)
    in_flight = {m: n for m, n in snap.in_flight.items() if n}
    return OpsSummary(
        tenant=tenant,
        time=time.time(),
        queue_depth=sum(snap.lane_depths.values()),
        queue_depth_tenant=mine,
        in_flight=dict(sorted(in_flight.items())),
        in_flight_total=sum(in_flight.values()),
        oldest_in_flight_s=snap.oldest_in_flight_s,
        jobs_by_status=snap.by_status,
        batches=await recent_batches(s, tenant),
    )


async def recent_batches(s: Services, tenant: str) -> list[dict[str, Any]]:
    """Batches found through the ``batch_id`` of the tenant's most recent jobs
    (there is no per-tenant batch index): one ZREVRANGE, one pipelined HGET
    per job, then each batch's view."""
    r = s.redis
    recent = await r.zrevrange(s.store.keys.tenant_jobs(tenant), 0, RECENT_JOBS_FOR_BATCHES - 1)
    ids = [_s(x) for x in recent]
    if not ids:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(s.store.keys.job(jid), "batch_id")
        found = await pipe.execute()
    seen: list[str] = []
    for b in found:
        bid = _s(b) if b else ""
        if bid and bid not in seen:
            seen.append(bid)
            if len(seen) == MAX_BATCHES:
                break
    out = []
    for bid in seen:
        batch = await batches.get_batch(s, tenant, bid)
        if batch is not None:
            out.append(await batches.batch_view(s, batch))
    return out


@router.get("/v1/ops/summary", response_model=OpsSummary)
async def ops_summary(s: Svc, t: Tenant) -> OpsSummary:
    """Queue depth, jobs in flight by model, the oldest in-flight job's age and
    jobs by status (all tenants), and the caller's recent batches."""
    return await summary(s, t)


_STYLE = r"""
:root { color-scheme: light dark; --bg: #f6f7f9; --fg: #1d2330; --muted: #667085;
  --card: #fff; --line: #dfe3ea; --accent: #2f6fed; --ok: #1a7f37; --bad: #c4302b;
  --warn: #9a6700; }
@media (prefers-color-scheme: dark) { :root { --bg: #14171c; --fg: #e6e9ef;
  --muted: #98a2b3; --card: #1d2128; --line: #2e343e; --accent: #6b9bff; --ok: #3fb950;
  --bad: #f47067; --warn: #d29922; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header { display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: center;
  padding: 10px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; } h1 span { color: var(--muted); font-weight: 400; }
h2 { font-size: 15px; margin: 0 0 8px; display: flex; gap: 10px; align-items: baseline; }
h2 small { color: var(--muted); font-weight: 400; font-size: 12px; }
form { display: flex; gap: 6px; align-items: center; margin: 0; }
input, select, button { font: inherit; }
input[type=password], input[type=text], select { padding: 3px 6px;
  border: 1px solid var(--line); border-radius: 4px; background: var(--bg); color: var(--fg); }
button { padding: 3px 10px; border: 1px solid var(--line); border-radius: 4px;
  background: var(--bg); color: var(--fg); cursor: pointer; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:disabled { opacity: .6; cursor: default; }
#status { margin-left: auto; color: var(--muted); }
#status.err { color: var(--bad); font-weight: 600; }
main { padding: 16px 20px; display: grid; gap: 16px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; overflow-x: auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card .n { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .l { color: var(--muted); font-size: 12px; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 10px; }
.chip { border: 1px solid var(--line); border-radius: 12px; padding: 1px 9px; font-size: 12px; }
.chip b { font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: baseline; }
th { color: var(--muted); font-weight: 500; font-size: 12px; white-space: nowrap; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; }
td.wrap { max-width: 28em; overflow-wrap: anywhere; }
.empty { color: var(--muted); font-style: italic; margin: 6px 0 0; }
.st { font-weight: 600; }
.st-completed, .st-delivered { color: var(--ok); }
.st-failed, .st-expired, .st-dead, .st-error { color: var(--bad); }
.st-running, .st-pending, .st-queued { color: var(--accent); }
.st-cancelled, .st-incomplete, .st-requires_action, .st-gone, .st-no_endpoint {
  color: var(--warn); }
.batch { display: grid; grid-template-columns: minmax(14em, auto) 1fr auto; gap: 4px 12px;
  align-items: center; padding: 6px 0; border-bottom: 1px solid var(--line); }
.batch:last-child { border-bottom: 0; }
.batch progress { width: 100%; height: 14px; accent-color: var(--ok); }
.batch .detail { grid-column: 1 / -1; color: var(--muted); font-size: 12px; }
"""

_SCRIPT = r"""
"use strict";
const KEY = "interq.apiKey", FILTER = "interq.jobFilter", REFRESH_MS = 2000;
const STATUSES = new Set(["queued", "running", "requires_action", "completed", "failed",
  "cancelled", "incomplete", "expired", "pending", "delivered", "dead", "gone",
  "no_endpoint", "error", "in_progress"]);
const $ = (id) => document.getElementById(id);
const tracked = new Map();  // redelivered event id -> what we know of it
let busy = false, again = false;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const headers = { "Accept": "application/json" };
  const key = localStorage.getItem(KEY) || "";
  if (key) headers["Authorization"] = "Bearer " + key;
  const r = await fetch(path, Object.assign({ cache: "no-store" }, options, { headers }));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = body && body.error;
    throw new ApiError(r.status, err ? err.code + ": " + err.message : "HTTP " + r.status);
  }
  return body;
}

function pad(n) { return String(n).padStart(2, "0"); }
function fmtTime(sec) {
  if (sec === null || sec === undefined) return "—";
  const d = new Date(sec * 1000);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function fmtAge(sec) {
  if (sec === null || sec === undefined) return "—";
  if (sec < 60) return sec.toFixed(sec < 10 ? 1 : 0) + " s";
  if (sec < 3600) return Math.floor(sec / 60) + " min " + Math.floor(sec % 60) + " s";
  return Math.floor(sec / 3600) + " h " + Math.floor((sec % 3600) / 60) + " min";
}
function setText(node, value) {
  const v = value === null || value === undefined || value === "" ? "—" : String(value);
  if (node.textContent !== v) node.textContent = v;
}
function setStatusClass(node, value) {
  const cls = "st" + (STATUSES.has(value) ? " st-" + value : "");
  if (node.className !== cls) node.className = cls;
}
// column helpers: each is (td, item, fresh) => void and only touches the DOM on change
const text = (f, cls) => (td, it, fresh) => {
  if (fresh && cls) td.className = cls;
  setText(td, f(it));
};
const status = (f) => (td, it) => { const v = f(it); setText(td, v); setStatusClass(td, v); };

// Keyed rows: an existing row is updated in place (a button under the pointer
// survives a refresh), rows that went away are removed, order follows items.
function syncRows(tbody, items, keyOf, columns) {
  const rows = tbody.rows_ || (tbody.rows_ = new Map());
  const keep = new Set();
  items.forEach((it, i) => {
    const k = keyOf(it);
    keep.add(k);
    let row = rows.get(k), fresh = false;
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = k;
      for (let c = 0; c < columns.length; c++) row.appendChild(document.createElement("td"));
      rows.set(k, row);
      fresh = true;
    }
    columns.forEach((col, c) => col(row.cells[c], it, fresh));
    if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
  });
  for (const [k, row] of rows) if (!keep.has(k)) { row.remove(); rows.delete(k); }
}
function showEmpty(id, empty) { $(id).hidden = !empty; }

function renderSummary(s) {
  setText($("queue"), s.queue_depth);
  setText($("queue-mine"), s.queue_depth_tenant);
  setText($("inflight"), s.in_flight_total);
  setText($("oldest"), fmtAge(s.oldest_in_flight_s));
  setText($("tenant"), s.tenant);
  const models = Object.entries(s.in_flight).map(([m, n]) => m + " " + n).join(", ");
  setText($("inflight-models"), models ? "in flight: " + models : "nothing in flight");
  const chips = $("by-status");
  for (const [st, n] of Object.entries(s.jobs_by_status)) {
    let chip = chips.querySelector('[data-status="' + CSS.escape(st) + '"]');
    if (!chip) {
      chip = document.createElement("span");
      chip.className = "chip";
      chip.dataset.status = st;
      const label = document.createElement("span");
      setStatusClass(label, st);
      label.textContent = st + " ";
      chip.append(label, document.createElement("b"));
      chips.appendChild(chip);
    }
    setText(chip.lastChild, n);
  }
  renderBatches(s.batches);
}

function renderBatches(list) {
  const box = $("batches"), rows = box.rows_ || (box.rows_ = new Map()), keep = new Set();
  list.forEach((b, i) => {
    keep.add(b.id);
    let row = rows.get(b.id);
    if (!row) {
      row = document.createElement("div");
      row.className = "batch";
      row.dataset.key = b.id;
      const id = document.createElement("span");
      id.className = "mono";
      id.textContent = b.id;
      const bar = document.createElement("progress");
      const frac = document.createElement("span");
      const detail = document.createElement("div");
      detail.className = "detail";
      row.append(id, bar, frac, detail);
      rows.set(b.id, row);
    }
    const [, bar, frac, detail] = row.children;
    bar.max = Math.max(1, b.total);
    bar.value = b.done;
    setText(frac, b.done + " / " + b.total + " · " + b.status);
    const counts = Object.entries(b.counts).filter(([, n]) => n > 0).map(([k, n]) => k + " " + n);
    setText(detail, (counts.join(" · ") || "no jobs") + " · created " + fmtTime(b.created_at) +
      (b.finished_at ? " · finished " + fmtTime(b.finished_at) : ""));
    if (box.children[i] !== row) box.insertBefore(row, box.children[i] || null);
  });
  for (const [k, row] of rows) if (!keep.has(k)) { row.remove(); rows.delete(k); }
  showEmpty("batches-empty", list.length === 0);
}

const JOB_COLUMNS = [
  text((j) => j.id, "mono"), status((j) => j.status), text((j) => j.custom_id, "wrap"),
  text((j) => j.model), text((j) => fmtTime(j.created_at)), text((j) => j.upstream_status),
];
async function loadJobs() {
  const want = $("filter").value;
  const q = new URLSearchParams({ limit: "50" });
  if (want) q.set("status", want);
  const page = await api("/v1/jobs?" + q);
  if ($("filter").value !== want) return;  // the filter changed meanwhile
  syncRows($("jobs"), page.data, (j) => j.id, JOB_COLUMNS);
  showEmpty("jobs-empty", page.data.length === 0);
  setText($("jobs-count"), page.data.length + (page.next_cursor ? "+" : "") + " shown");
}

const DEAD_COLUMNS = [
  text((e) => e.id, "mono"), text((e) => e.type), text((e) => e.owner, "mono"),
  text((e) => e.attempts), text((e) => e.last_error, "wrap"),
  text((e) => fmtTime(e.last_attempt_at)),
  (td, e, fresh) => {
    if (!fresh) return;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "primary redeliver";
    b.textContent = "Redeliver";
    b.addEventListener("click", () => redeliver(e, b));
    td.appendChild(b);
  },
];
async function loadDead() {
  const page = await api("/v1/webhooks/dead-letters?limit=100");
  syncRows($("dead"), page.data, (e) => e.id, DEAD_COLUMNS);
  showEmpty("dead-empty", page.data.length === 0);
  setText($("dead-count"), page.data.length + " dead-lettered");
  for (const e of page.data) {
    const t = tracked.get(e.id);
    if (t && t.state === "pending" && e.last_attempt_at && e.last_attempt_at > t.at) {
      Object.assign(t, { state: "dead", attempts: e.attempts, error: e.last_error });
    }
  }
}

async function redeliver(ev, button) {
  button.disabled = true;
  button.textContent = "Redelivering…";
  const at = Date.now() / 1000;
  try {
    const r = await api("/v1/webhooks/events/" + encodeURIComponent(ev.id) + "/redeliver",
      { method: "POST" });
    const note = r.owner && r.owner.startsWith("job:") ? null
      : "not followed here: it comes back above if it fails again";
    tracked.set(ev.id, { id: ev.id, owner: r.owner, type: r.type, state: r.state,
      attempts: r.attempts, error: note, at });
  } catch (e) {
    tracked.set(ev.id, { id: ev.id, owner: ev.owner, type: ev.type, state: "error",
      attempts: ev.attempts, error: e.message, at });
    button.disabled = false;
    button.textContent = "Redeliver";
  }
  renderTracked();
  refresh();
}

async function updateTracked() {
  const jobs = new Map();
  for (const t of tracked.values()) {
    if (t.state === "pending" && t.owner && t.owner.startsWith("job:")) {
      const jid = t.owner.slice(4);
      if (!jobs.has(jid)) jobs.set(jid, []);
      jobs.get(jid).push(t);
    }
  }
  await Promise.all([...jobs].map(async ([jid, ts]) => {
    const d = await api("/v1/jobs/" + encodeURIComponent(jid) + "/deliveries");
    for (const t of ts) {
      const ev = d.data.find((x) => x.id === t.id);
      if (!ev) continue;
      const log = ev.attempt_log || [];
      const last = log.length ? log[log.length - 1] : null;
      Object.assign(t, { state: ev.state, attempts: ev.attempts, error: ev.last_error,
        code: last ? last.status_code : null });
    }
  }));
  renderTracked();
}

const TRACK_COLUMNS = [
  text((t) => t.id, "mono"), text((t) => t.owner, "mono"), status((t) => t.state),
  text((t) => t.attempts), text((t) => t.error, "wrap"), text((t) => fmtTime(t.at)),
];
function renderTracked() {
  const list = [...tracked.values()].sort((a, b) => b.at - a.at).slice(0, 20);
  syncRows($("redelivered"), list, (t) => t.id, TRACK_COLUMNS);
  showEmpty("redelivered-empty", list.length === 0);
}

function showStatus(errors) {
  const el = $("status");
  if (!errors.length) {
    el.className = "";
    el.textContent = "updated " + fmtTime(Date.now() / 1000).slice(11);
    document.body.dataset.state = "ok";
    return;
  }
  const auth = errors.find((e) => e.status === 401);
  el.className = "err";
  el.textContent = auth
    ? "Unauthorized (" + auth.message + "): enter this API's key above."
    : "Refresh failed: " + (errors[0].message || String(errors[0]));
  document.body.dataset.state = auth ? "unauthorized" : "error";
}

async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  const errors = [];
  try {
    const jobs = [
      api("/v1/ops/summary").then(renderSummary), loadJobs(), loadDead(), updateTracked(),
    ];
    for (const r of await Promise.allSettled(jobs)) {
      if (r.status === "rejected") errors.push(r.reason);
    }
  } finally {
    busy = false;
  }
  showStatus(errors);
  if (again) { again = false; refresh(); }
}

function init() {
  const keyInput = $("key");
  keyInput.value = localStorage.getItem(KEY) || "";
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = keyInput.value.trim();
    if (v) localStorage.setItem(KEY, v); else localStorage.removeItem(KEY);
    refresh();
  });
  $("clearkey").addEventListener("click", () => {
    keyInput.value = "";
    localStorage.removeItem(KEY);
    refresh();
  });
  const filter = $("filter");
  filter.value = localStorage.getItem(FILTER) || "";
  filter.addEventListener("change", () => {
    localStorage.setItem(FILTER, filter.value);
    syncRows($("jobs"), [], (j) => j.id, JOB_COLUMNS);
    refresh();
  });
  setInterval(() => { if ($("auto").checked && !document.hidden) refresh(); }, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
}
init();
"""

_BODY = """
<header>
  <h1>interq <span>ops</span></h1>
  <form id="keyform" autocomplete="off">
    <label for="key">API key</label>
    <input id="key" type="password" placeholder="none if the API has no keys"
      spellcheck="false" size="24">
    <button type="submit" id="savekey">Save</button>
    <button type="button" id="clearkey">Clear</button>
  </form>
  <label><input type="checkbox" id="auto" checked> refresh every 2 s</label>
  <span id="status" role="status">loading…</span>
</header>
<main>
  <section aria-labelledby="h-queue">
    <h2 id="h-queue">Queue <small>tenant <span id="tenant">—</span>;
      counts are for all tenants unless marked</small></h2>
    <div class="cards">
      <div class="card"><div class="n" id="queue">—</div>
        <div class="l">waiting for dispatch</div></div>
      <div class="card"><div class="n" id="queue-mine">—</div>
        <div class="l">waiting (yours)</div></div>
      <div class="card"><div class="n" id="inflight">—</div>
        <div class="l" id="inflight-models">in flight</div></div>
      <div class="card"><div class="n" id="oldest">—</div>
        <div class="l">oldest in flight</div></div>
    </div>
    <div class="chips" id="by-status" aria-label="jobs by status"></div>
  </section>
  <section aria-labelledby="h-batches">
    <h2 id="h-batches">Batches <small>among your recent jobs</small></h2>
    <div id="batches"></div>
    <p class="empty" id="batches-empty">No recent batches.</p>
  </section>
  <section aria-labelledby="h-jobs">
    <h2 id="h-jobs">Recent jobs
      <label><small>status</small> <select id="filter">
        <option value="">all</option>__STATUS_OPTIONS__
      </select></label>
      <small id="jobs-count"></small></h2>
    <table>
      <thead><tr><th>id</th><th>status</th><th>custom_id</th><th>model</th><th>created</th>
        <th>upstream_status</th></tr></thead>
      <tbody id="jobs"></tbody>
    </table>
    <p class="empty" id="jobs-empty" hidden>No jobs.</p>
  </section>
  <section aria-labelledby="h-dead">
    <h2 id="h-dead">Dead-lettered webhooks <small id="dead-count"></small></h2>
    <table>
      <thead><tr><th>event</th><th>type</th><th>owner</th><th>attempts</th><th>last error</th>
        <th>last attempt</th><th></th></tr></thead>
      <tbody id="dead"></tbody>
    </table>
    <p class="empty" id="dead-empty" hidden>No dead letters.</p>
  </section>
  <section aria-labelledby="h-redelivered">
    <h2 id="h-redelivered">Redelivered from this page</h2>
    <table>
      <thead><tr><th>event</th><th>owner</th><th>state</th><th>attempts</th><th>last error</th>
        <th>redelivered</th></tr></thead>
      <tbody id="redelivered"></tbody>
    </table>
    <p class="empty" id="redelivered-empty">Nothing redelivered yet.</p>
  </section>
</main>
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _page() -> tuple[str, str]:
    options = "".join(
        f'\n        <option value="{html.escape(st.value)}">{html.escape(st.value)}</option>'
        for st in JobStatus
    )
    body = _BODY.replace("__STATUS_OPTIONS__", options)
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n<title>interq ops</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>{body}<script>{_SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{_sha256(_SCRIPT)}'; "
        f"style-src 'sha256-{_sha256(_STYLE)}'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp


PAGE, CSP = _page()


@router.get("/ui", include_in_schema=False)
async def ui() -> Response:
    """The ops page. It holds no data: everything is fetched with the key the
    user enters, so serving it needs no auth."""
    return Response(
        PAGE,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )
