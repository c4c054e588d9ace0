
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

// Live batches: each shown batch that has not ended is followed through its
// event stream (GET /v1/batches/{id}/events, read with fetch so that it can
// carry the key; resumed with Last-Event-ID), not by the summary's polling.
const live = new Map();  // batch id -> {view, last, done, ctl}
let shownBatches = [];

function sseBlock(block) {
  let kind = "message", data = "", id = null;
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const c = line.indexOf(":");
    const field = c < 0 ? line : line.slice(0, c);
    let v = c < 0 ? "" : line.slice(c + 1);
    if (v.startsWith(" ")) v = v.slice(1);
    if (field === "event") kind = v;
    else if (field === "data") data += (data ? "\n" : "") + v;
    else if (field === "id") id = v;
  }
  return { kind, data, id };
}

async function followStream(path, entry, onEvent) {
  const headers = { "Accept": "text/event-stream" };
  const key = localStorage.getItem(KEY) || "";
  if (key) headers["Authorization"] = "Bearer " + key;
  if (entry.last) headers["Last-Event-ID"] = entry.last;
  const r = await fetch(path, { headers, cache: "no-store", signal: entry.ctl.signal });
  if (!r.ok) { if (r.status === 404) entry.done = true; throw new ApiError(r.status, "HTTP " + r.status); }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let m;
    while ((m = /\r?\n\r?\n/.exec(buf))) {
      const ev = sseBlock(buf.slice(0, m.index));
      buf = buf.slice(m.index + m[0].length);
      if (ev.id !== null) entry.last = ev.id;
      if (ev.data) onEvent(ev.kind, JSON.parse(ev.data));
    }
  }
}

function watchBatch(id) {
  if (live.has(id)) return;
  const entry = { view: null, last: null, done: false, ctl: new AbortController() };
  live.set(id, entry);
  const onEvent = (kind, data) => {
    if (kind === "batch") entry.view = data;
    else if (kind === "counts" && entry.view) Object.assign(entry.view, data);
    else if (kind === "status" && entry.view) entry.view.status = data.status;
    if (kind === "batch" && (data.status === "completed" || data.status === "cancelled")) {
      entry.done = true;
    }
    renderBatches(shownBatches);
  };
  (async () => {
    for (let tries = 0; tries < 1000 && !entry.done && !entry.ctl.signal.aborted; tries++) {
      try {
        await followStream("/v1/batches/" + encodeURIComponent(id) + "/events", entry, onEvent);
      } catch (e) {
        if (entry.ctl.signal.aborted) return;
      }
      if (!entry.done) await new Promise((ok) => setTimeout(ok, 2000));  // then resume
    }
  })();
}

function stopWatching(keepIds) {
  for (const [id, entry] of live) {
    if (!keepIds || !keepIds.has(id)) { entry.ctl.abort(); live.delete(id); }
  }
}

function renderBatches(list) {
  shownBatches = list;
  const box = $("batches"), rows = box.rows_ || (box.rows_ = new Map()), keep = new Set();
  list.forEach((listed, i) => {
    const seen = live.get(listed.id);
    const b = seen && seen.view && seen.view.done >= listed.done
      ? Object.assign({}, listed, seen.view) : listed;
    if (b.status === "in_progress" || b.status === "paused") watchBatch(b.id);
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
  stopWatching(keep);
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
    stopWatching(null);
    refresh();
  });
  $("clearkey").addEventListener("click", () => {
    keyInput.value = "";
    localStorage.removeItem(KEY);
    stopWatching(null);
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
