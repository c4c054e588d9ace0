"""Storage benchmark: Redis bytes per finished job, and the ``/metrics`` scrape
time with ``--jobs`` finished jobs stored (1,000,000 by default).

Run, on one private redis-server, with the API and one worker as real processes:

1. warm-up: one job through and swept, so the global keys (``{p}:seq``,
   ``{p}:counts`` ...) exist; then the baseline: DBSIZE, ``used_memory`` and
   ``--scrapes`` scrapes of ``/metrics`` with no job stored;
2. sample (the real path): ``--sample`` jobs POSTed to the API, run by the worker
   against the simulator, each delivering its webhook to a local receiver, until
   every job is completed and every event delivered. Bytes per job =
   ``used_memory`` delta / jobs, keys per job = DBSIZE delta / jobs;
3. bulk (the fast path): the remaining jobs written by a Lua script that copies
   one sample job key by key (record, events list, event, attempt log, tenant
   and status indexes, counts, sequence, expiry entry) under new ids of the same
   length, 1,000 jobs per call, pipelined. Its bytes and keys per job are printed
   beside the sample's: they must agree for the bulk to stand for real jobs;
4. ``--scrapes`` scrapes of ``/metrics`` (client-side wall time) with all jobs
   stored, beside the baseline; and, for scale, one pass of the keyspace SCAN the
   old ``/metrics`` made (``SCAN MATCH {p}:inflight:*``), timed in-process;
5. the sweep: ``jobs.retention.sweep_once`` in a loop with a clock past every
   job's retention, as one worker's sweeper would run it; then DBSIZE,
   ``used_memory`` and the results folder against the baseline, and the scrapes
   once more with Redis empty again (the two empty runs bracket the full one, so
   a difference from load elsewhere on the machine shows).

Each job: a ~330-character prompt, ``metadata`` and ``custom_id``, a webhook with
its own secret, the simulator's text answer; the full result JSON goes to the
results folder, not Redis. Redis keeps the prompt, the output text and the
webhook event body, so bytes per job grow with those.

Target: scrape p99 <= 50 ms with 1,000,000 jobs stored.

    .venv/bin/python -m bench.storage [--jobs 1000000] [--sample 1000] [--scrapes 50] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import typer

from bench.common import cli_app, fmt, options, pct, save, stack, sync_redis, table, wait_until
from jobs.delivery.signing import generate_secret
from jobs.dev.receiver import Receiver
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage.keys import Keys
from jobs.work import retention

PREFIX = "interq"
KEYS = Keys(PREFIX)
PROMPT = (
    "Read the customer message below and answer in three short sentences: what they "
    "want, whether the order can be changed, and what to do next. Message: 'Hello, I "
    "ordered two blue jackets (order 88-1412) last Tuesday and would like to swap one "
    "for a size larger. Is that still possible before it ships?' [sim duration=0.05]"
)
FAR_S = 400 * 86_400.0  # a sweep clock past any job's retention
CLONE_PER_CALL = 1_000

# Copy template job ARGV[1].tid (and its one event) as spec.count new jobs.
_CLONE = """
local spec = cjson.decode(ARGV[1])
local p, t = spec.prefix, spec.tenant
for i = spec.start, spec.start + spec.count - 1 do
  local jid = 'job_' .. spec.run .. string.format('%024x', i)
  local eid = 'evt_' .. spec.run .. string.format('%024x', i)
  local jk, ek = p .. ':job:{' .. jid .. '}', p .. ':event:{' .. eid .. '}'  -- as jobs/keys.py
  local seq = redis.call('INCR', p .. ':seq')
  local function swap(v)
    return (string.gsub(string.gsub(v, spec.tid, jid), spec.teid, eid))
  end
  local args = {}
  for k = 1, #spec.job, 2 do
    local f, v = spec.job[k], spec.job[k + 1]
    if f == 'seq' then v = tostring(seq) elseif spec.swap[f] then v = swap(v) end
    args[#args + 1] = f
    args[#args + 1] = v
  end
  redis.call('HSET', jk, unpack(args))
  redis.call('RPUSH', jk .. ':events', eid)
  local ev = {}
  for k = 1, #spec.event do ev[k] = swap(spec.event[k]) end
  redis.call('HSET', ek, unpack(ev))
  if #spec.attempts > 0 then redis.call('RPUSH', ek .. ':attempts', unpack(spec.attempts)) end
  redis.call('ZADD', p .. ':t:' .. t .. ':jobs', seq, jid)
  redis.call('ZADD', p .. ':t:' .. t .. ':s:' .. spec.status, seq, jid)
  redis.call('HINCRBY', p .. ':counts', spec.status, 1)
  redis.call('ZADD', p .. ':expiring:jobs', spec.due, jid)
end
return spec.count
"""


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def client_memory(r: Any) -> int:
    """Connection buffers: they follow the number of clients, not of jobs."""
    return int(r.info("memory")["mem_clients_normal"])


def memory_parts(r: Any) -> dict[str, int]:
    """MEMORY STATS, the numeric parts (where a difference to the baseline sits)."""
    flat: dict[str, int] = {}
    for k, v in r.memory_stats().items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, int)})
        elif isinstance(v, int):
            flat[k] = v
    if r.dbsize() < 100:  # and each key's own size (only ever a handful here)
        flat.update({f"key {k.decode()}": r.memory_usage(k) or 0 for k in r.scan_iter()})
    return flat


def field_sizes(spec: dict[str, Any]) -> dict[str, int]:
    """Bytes of the template job's largest record fields and its event body."""
    job = dict(zip(spec["job"][::2], spec["job"][1::2], strict=True))
    sizes = {f"job.{k}": len(v.encode()) for k, v in job.items()}
    event = dict(zip(spec["event"][::2], spec["event"][1::2], strict=True))
    sizes["event.body"] = len(event["body"].encode())
    sizes["attempt log"] = sum(len(a.encode()) for a in spec["attempts"])
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:8])


def files_in(results_url: str) -> int:
    root = Path(results_url.removeprefix("file://"))
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def scrape_ms(api: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=api, timeout=60) as c:
        c.get("/metrics").raise_for_status()  # connection and first-call costs
        for _ in range(n):
            t0 = time.perf_counter()
            c.get("/metrics").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def old_scan_s(r: Any) -> float:
    """What ``queue_snapshot`` did before: SCAN the keyspace for in-flight zsets."""
    t0 = time.perf_counter()
    for _ in r.scan_iter(f"{PREFIX}:inflight:*", count=1000):
        pass
    return time.perf_counter() - t0


async def post_sample(api: str, n: int, hook: Receiver) -> None:
    gate = asyncio.Semaphore(16)
    secret = generate_secret()

    async def one(c: httpx.AsyncClient, i: int) -> None:
        body = {
            "interaction": {"model": "sim-model", "input": PROMPT},
            "webhook": {"url": hook.url, "secret": secret},
            "metadata": {"customer": f"c-{i:06d}", "source": "support-inbox"},
            "custom_id": f"ticket-{i:06d}",
        }
        async with gate:
            (await c.post("/v1/jobs", json=body)).raise_for_status()

    async with httpx.AsyncClient(base_url=api, timeout=60) as c:
        await asyncio.gather(*(one(c, i) for i in range(n)))


def settled(r: Any, completed: int, hook: Receiver, delivered: int) -> bool:
    done = int(r.hget(KEYS.counts, "completed") or 0)
    return done == completed and len(hook.deliveries) >= delivered and r.zcard("arq:queue") == 0


def run_jobs(st: Any, r: Any, n: int, hook: Receiver) -> None:
    start_count = len(hook.deliveries)
    asyncio.run(post_sample(st.api_url, n, hook))
    wait_until(lambda: settled(r, n, hook, start_count + n), 600, 0.2, f"{n} jobs settled")
    time.sleep(1.0)  # the last delivery's bookkeeping lands after the receiver answered


def template(r: Any) -> dict[str, Any]:
    """One sample job's keys, as the clone script takes them."""
    jid = r.zrange(KEYS.tenant_status("default", "completed"), 0, 0)[0].decode()
    job = {k.decode(): v.decode() for k, v in r.hgetall(KEYS.job(jid)).items()}
    (eid,) = [x.decode() for x in r.lrange(KEYS.job_events(jid), 0, -1)]
    event = r.hgetall(KEYS.event(eid))
    attempts = [x.decode() for x in r.lrange(KEYS.event_attempts(eid), 0, -1)]
    due = r.zscore(KEYS.expiring_jobs, jid)
    return {
        "prefix": PREFIX,
        "tenant": "default",
        "status": job["status"],
        "tid": jid,
        "teid": eid,
        "job": [x for kv in job.items() for x in kv],
        "swap": {k: 1 for k, v in job.items() if jid in v or eid in v},  # fields naming the ids
        "event": [x.decode() for kv in event.items() for x in kv],
        "attempts": attempts,
        "due": str(int(due)),
        "run": os.urandom(4).hex(),
    }


def bulk_fill(r: Any, n: int, spec: dict[str, Any]) -> float:
    clone = r.register_script(_CLONE)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        pipe = r.pipeline(transaction=False)
        for _ in range(10):
            count = min(CLONE_PER_CALL, n - done)
            if count <= 0:
                break
            clone(args=[json.dumps({**spec, "start": done, "count": count})], client=pipe)
            done += count
        pipe.execute()
    return time.perf_counter() - t0


async def sweep_all(settings: Settings) -> tuple[float, int]:
    svc = Services.open(settings)
    before = int(await svc.redis.zcard(KEYS.expiring_jobs))
    t0 = time.perf_counter()
    try:
        while await retention.sweep_once(svc, now=time.time() + FAR_S) == 0.0:
            pass
    finally:
        await svc.close()
    return time.perf_counter() - t0, before


def machine_extra(r: Any) -> dict[str, Any]:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": int(nproc),
        "kernel": platform.release(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "redis": r.info("server")["redis_version"],
    }


def measure(a: SimpleNamespace) -> dict[str, Any]:
    with stack(workers=0) as st, Receiver(require_signature=False) as hook:  # 204 to all
        st.start_worker(INTERQ_LOG_LEVEL="WARNING")
        settings = Settings(
            redis_url=st.redis_url,
            upstream_url=st.sim_url,
            results_url=st.env["INTERQ_RESULTS_URL"],
            gemini_api_key=None,
        )
        r = sync_redis(st.redis_url)
        run_jobs(st, r, 1, hook)  # warm-up
        asyncio.run(sweep_all(settings))
        base = {"dbsize": r.dbsize(), "used_memory": used_memory(r), "clients": client_memory(r)}
        base_parts = memory_parts(r)
        base_scrape = scrape_ms(st.api_url, a.scrapes)
        print(f"baseline: DBSIZE {base['dbsize']}, used_memory {base['used_memory']:,}", flush=True)

        print(f"sample: {a.sample} jobs through the API and a worker ...", flush=True)
        run_jobs(st, r, a.sample, hook)
        m1, k1, c1 = used_memory(r), r.dbsize(), client_memory(r)
        sample: dict[str, Any] = {"bytes_per_job": (m1 - base["used_memory"]) / a.sample}
        grown = m1 - c1 - (base["used_memory"] - base["clients"])
        sample["bytes_per_job_less_clients"] = grown / a.sample
        sample["keys_per_job"] = (k1 - base["dbsize"]) / a.sample
        sample["files"] = files_in(settings.results_url)
        bulk_n = a.jobs - a.sample
        print(f"bulk: {bulk_n:,} more jobs, copied from one sample job ...", flush=True)
        spec = template(r)
        sample["largest_fields_bytes"] = field_sizes(spec)
        fill_s = bulk_fill(r, bulk_n, spec)
        time.sleep(2.0)  # let Redis finish growing its main hash table
        m2, k2, c2 = used_memory(r), r.dbsize(), client_memory(r)
        bulk = {"jobs": bulk_n, "fill_s": fill_s, "bytes_per_job": (m2 - m1) / max(bulk_n, 1)}
        bulk["bytes_per_job_less_clients"] = (m2 - c2 - m1 + c1) / max(bulk_n, 1)
        bulk["keys_per_job"] = (k2 - k1) / max(bulk_n, 1)
        stored = {"jobs": a.jobs, "dbsize": k2, "used_memory": m2}

        print(f"scrapes with {a.jobs:,} jobs stored ...", flush=True)
        full_scrape = scrape_ms(st.api_url, a.scrapes)
        scan_s = old_scan_s(r)
        print("sweep ...", flush=True)
        sweep_s, swept = asyncio.run(sweep_all(settings))
        time.sleep(2.0)
        after = {"dbsize": r.dbsize(), "used_memory": used_memory(r), "clients": client_memory(r)}
        after["files"] = files_in(settings.results_url)
        after["scrape_ms"] = stats(scrape_ms(st.api_url, a.scrapes))  # empty again
        parts = memory_parts(r)
        diff = {k: v - base_parts.get(k, 0) for k, v in parts.items()}
        after["memory_stats_vs_baseline"] = {k: v for k, v in diff.items() if abs(v) >= 4096}
        host = machine_extra(r)
        r.close()
    return {
        "host": host,
        "baseline": {**base, "scrape_ms": stats(base_scrape)},
        "sample": sample,
        "bulk": bulk,
        "stored": {**stored, "scrape_ms": stats(full_scrape), "old_scan_s": scan_s},
        "sweep": {"s": sweep_s, "jobs": swept, "per_s": swept / sweep_s, "after": after},
    }


def stats(ms: list[float]) -> dict[str, Any]:
    return {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": max(ms)}


def report(res: dict[str, Any], a: SimpleNamespace) -> bool:
    b, s, k, st, sw = res["baseline"], res["sample"], res["bulk"], res["stored"], res["sweep"]
    ratio = k["bytes_per_job_less_clients"] / s["bytes_per_job_less_clients"]
    less = "less client buffers"
    rows = [
        ("measure", "value", "baseline in the same run"),
        (
            f"Redis bytes / finished job (real path, {a.sample:,} jobs)",
            f"{s['bytes_per_job']:,.0f} B ({s['bytes_per_job_less_clients']:,.0f} B {less}), "
            f"{s['keys_per_job']:.2f} keys",
            f"0 jobs: used_memory {b['used_memory']:,} B, DBSIZE {b['dbsize']}",
        ),
        (
            f"  bulk copy ({k['jobs']:,} jobs in {k['fill_s']:.0f} s)",
            f"{k['bytes_per_job']:,.0f} B ({k['bytes_per_job_less_clients']:,.0f} B {less}), "
            f"{k['keys_per_job']:.2f} keys",
            f"{ratio:.3f} x the real path ({less})",
        ),
        (
            f"/metrics p50 / p99 ({st['jobs']:,} jobs, {st['dbsize']:,} keys)",
            f"{fmt(st['scrape_ms']['p50'], 2)} / {fmt(st['scrape_ms']['p99'], 2)} ms",
            f"empty: {fmt(b['scrape_ms']['p50'], 2)} / {fmt(b['scrape_ms']['p99'], 2)} ms; "
            f"empty again after the sweep: {fmt(sw['after']['scrape_ms']['p50'], 2)} / "
            f"{fmt(sw['after']['scrape_ms']['p99'], 2)} ms",
        ),
        ("  the old keyspace SCAN alone", f"{st['old_scan_s'] * 1000:,.0f} ms", "-"),
        (
            f"sweep of {sw['jobs']:,} jobs (one sweeper)",
            f"{sw['s']:.1f} s, {sw['per_s']:,.0f} jobs/s",
            f"after: DBSIZE {sw['after']['dbsize']} (was {b['dbsize']}), "
            f"used_memory less clients {sw['after']['used_memory'] - sw['after']['clients']:,} B "
            f"(was {b['used_memory'] - b['clients']:,}), files {sw['after']['files']}",
        ),
    ]
    print(table(rows))
    ok = bool(st["scrape_ms"]["p99"] <= 50 and sw["after"]["dbsize"] == b["dbsize"])
    print(f"target /metrics p99 <= 50 ms and DBSIZE back to baseline: {'met' if ok else 'NOT met'}")
    return ok


Opt = typer.Option


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt(help="finished jobs stored in all")] = 1_000_000,
    sample: Annotated[int, Opt(help="of them, run the real way")] = 1_000,
    scrapes: Annotated[int, Opt(min=1, help="scrapes of /metrics per state")] = 50,
    quick: Annotated[bool, Opt("--quick", help="short smoke run (20,000 jobs)")] = False,
) -> None:
    a = options(ctx)
    if a.quick:
        a.jobs, a.sample, a.scrapes = 20_000, 200, 20
    a.jobs = max(a.jobs, a.sample)
    t0 = time.monotonic()
    res = measure(a)
    met = report(res, a)
    path = save("storage", {"args": vars(a), **res, "target_met": met})
    print(f"{time.monotonic() - t0:.0f} s; wrote {path}")


main = cli_app(command, "python -m bench.storage", __doc__)


if __name__ == "__main__":
    sys.exit(main())
