"""The verdict on a chaos run: what was lost, stuck, undelivered or duplicated,
from everything read back after the run (one ``RunResult``)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, cast

import redis

from chaos.config import KEYS, PREFIX, TERMINAL, Options, Plan
from chaos.service import Service
from jobs.dev.receiver import Delivery, Receiver


@dataclass
class RunResult:
    """Everything a verdict is drawn from."""

    opts: Options
    plan: Plan
    cid_to_id: dict[str, str]  # custom_id -> job id, as submitted
    jobs: dict[str, Any]  # job id -> the API's view (None: 404)
    results: dict[str, int]  # completed job id -> /result status code
    events: dict[str, list[dict[str, Any]]]  # job id -> its stored events
    batch_event: dict[str, Any] | None
    batch_id: str | None
    received: list[Delivery]  # what the receiver was sent
    receiver: Receiver
    sim_stats: dict[str, Any]  # /_sim/stats
    sim_faults: Counter[str]  # fault kind ("none") -> upstream requests
    cluster: Service
    drive_info: dict[str, Any]  # what ``drive`` returned


def cut(d: dict[str, Any], n: int) -> dict[str, Any]:
    return dict(list(d.items())[:n])


def job_checks(res: RunResult) -> dict[str, Any]:
    ids = list(res.cid_to_id.values())
    all_cids = [s["custom_id"] for s in res.plan.singles + res.plan.batch]
    never = [c for c in all_cids if c not in res.cid_to_id]  # never got an id at submission
    present = {j: v for j, v in res.jobs.items() if v is not None}
    return {
        "all_cids": all_cids,
        "lost": [j for j in ids if res.jobs.get(j) is None] + never,
        "present": present,
        "statuses": Counter(v["status"] for v in present.values()),
        "not_terminal": {j: v["status"] for j, v in present.items() if v["status"] not in TERMINAL},
        "not_completed": {
            j: {"status": v["status"], "error": v.get("error"), "note": v.get("note")}
            for j, v in present.items()
            if v["status"] in TERMINAL and v["status"] != "completed"
        },
        "no_result": [j for j, code in res.results.items() if code != 200],
        "finished": [j for j, v in present.items() if v["status"] in TERMINAL],
    }


def webhook_checks(res: RunResult, finished: list[str]) -> dict[str, Any]:
    """One terminal event per finished job, delivered, under one webhook-id."""
    by_owner: dict[str, set[str]] = defaultdict(set)
    verified: set[str] = set()
    for d in res.received:
        if d.verified:
            by_owner[d.owner_id].add(d.msg_id)
            verified.add(d.msg_id)
    w: dict[str, Any] = {"by_owner": by_owner, "states": Counter(), "undelivered": {}}
    w.update(extra={}, multi={}, wrong={})
    for jid in finished:
        evs = [e for e in res.events.get(jid, []) if str(e["type"]).startswith("job.")]
        if len(evs) > 1:
            w["extra"][jid] = evs
        if not evs:
            w["undelivered"][jid] = "no event stored"
            w["states"]["missing"] += 1
            continue
        ev = evs[0]
        w["states"][ev["state"]] += 1
        if ev["state"] != "delivered" or ev["id"] not in verified:
            w["undelivered"][jid] = {**ev, "received": ev["id"] in verified}
        seen = by_owner.get(jid, set())
        if len(seen) > 1:
            w["multi"][jid] = sorted(seen)
        if seen and seen != {ev["id"]}:
            w["wrong"][jid] = {"stored": ev["id"], "received": sorted(seen)}
    w["batch"] = batch_check(res, verified, by_owner, w["multi"])
    w["deliveries"] = Counter(d.msg_id for d in res.received if d.verified)
    w["retried"] = sum(1 for evs in res.events.values() for e in evs if e["attempts"] > 1)
    return w


def batch_check(
    res: RunResult, verified: set[str], by_owner: dict[str, set[str]], multi: dict[str, Any]
) -> Any:
    """What is wrong with the batch.completed event (None: nothing); notes more than
    one webhook-id for the batch in ``multi``."""
    bev = res.batch_event
    if not res.batch_id:
        return None
    if bev is None:
        return "no batch.completed event stored"
    if bev["state"] != "delivered" or bev["id"] not in verified:
        return {**bev, "received": bev["id"] in verified}
    if len(by_owner.get(res.batch_id, set())) > 1:
        multi[res.batch_id] = sorted(by_owner[res.batch_id])
    return None


def upstream_checks(res: RunResult, present: dict[str, Any]) -> dict[str, Any]:
    """More than one upstream create for a job must be flagged possible_duplicate."""
    creates: dict[str, int] = res.sim_stats.get("creates_by_job", {})
    dups = {j: n for j, n in creates.items() if n > 1}
    total = sum(res.sim_faults.values())
    faulted = total - res.sim_faults.get("none", 0)
    return {
        "creates": creates,
        "dups": dups,
        "unflagged": {
            j: n for j, n in dups.items() if not (present.get(j) or {}).get("possible_duplicate")
        },
        "flagged": sum(1 for v in present.values() if v.get("possible_duplicate")),
        "never_created": [
            j for j, v in present.items() if v["status"] == "completed" and creates.get(j, 0) == 0
        ],
        "strangers": [j for j in creates if j not in present],
        "requests": total,
        "fault_share": round(faulted / total, 3) if total else 0,
    }


def failures(res: RunResult, j: dict[str, Any], w: dict[str, Any], u: dict[str, Any]) -> list[str]:
    cl, info = res.cluster, res.drive_info
    checks: list[tuple[Any, str]] = [
        (len(j["lost"]), "{} jobs lost (no record)"),
        (len(j["not_terminal"]), "{} jobs not terminal"),
        (
            len(j["not_completed"]) * (not res.opts.allow_failed),
            "{} jobs ended other than completed",
        ),
        (len(j["no_result"]), "{} completed jobs without a readable result"),
        (len(w["undelivered"]), "{} job webhook events undelivered"),
        (bool(w["batch"]), "the batch.completed event was not delivered"),
        (len(w["extra"]), "{} jobs with more than one terminal event"),
        (len(w["multi"]), "{} jobs/batches with more than one distinct webhook-id"),
        (len(w["wrong"]), "{} jobs whose received webhook-id is not the stored one"),
        (res.receiver.bad_signature, "{} deliveries failed signature verification"),
        (len(u["unflagged"]), "{} jobs created upstream more than once, unflagged"),
        (len(u["never_created"]), "{} completed jobs never created upstream"),
        (len(cl.api_exits), "the API exited {} times"),
        (len(cl.self_exits), "workers exited by themselves {} times"),
        (info.get("timed_out"), "timed out before everything settled"),
        (info.get("stalled"), "stalled: jobs or events stopped moving before everything settled"),
    ]
    return [text.format(n) for n, text in checks if n]


def sections(
    res: RunResult, j: dict[str, Any], w: dict[str, Any], u: dict[str, Any]
) -> dict[str, Any]:
    """The summary's "jobs", "webhooks" and "upstream" figures."""
    rv, finished = res.receiver, j["finished"]
    return {
        "jobs": {
            "submitted": len(j["all_cids"]),
            "single": len(res.plan.singles),
            "in_batch": len(res.plan.batch),
            "batch_id": res.batch_id,
            "lost": len(j["lost"]),
            "not_terminal": len(j["not_terminal"]),
            "by_status": dict(j["statuses"]),
            "not_completed": len(j["not_completed"]),
            "completed_without_result": len(j["no_result"]),
        },
        "webhooks": {
            "expected": len(finished),
            "delivered": len(finished) - len(w["undelivered"]),
            "undelivered": len(w["undelivered"]),
            "event_states": dict(w["states"]),
            "batch_event": res.batch_event,
            "jobs_with_more_than_one_event": len(w["extra"]),
            "max_distinct_webhook_ids_per_job": max(
                (len(s) for s in w["by_owner"].values()), default=0
            ),
            "jobs_with_more_than_one_webhook_id": len(w["multi"]),
            "received_ids_not_stored": len(w["wrong"]),
            "receiver_requests": rv.requests,
            "receiver_answered_503": rv.refused,
            "events_needing_more_than_one_attempt": w["retried"],
            "verified_deliveries": sum(w["deliveries"].values()),
            "events_received_more_than_once": sum(1 for n in w["deliveries"].values() if n > 1),
            "bad_signatures": rv.bad_signature,
        },
        "upstream": {
            "requests": u["requests"],
            "faults": {k: v for k, v in res.sim_faults.items() if k != "none"},
            "fault_share": u["fault_share"],
            "creates": res.sim_stats.get("created"),
            "jobs_created_more_than_once": len(u["dups"]),
            "extra_creates": sum(n - 1 for n in u["dups"].values()),
            "duplicates_flagged": len(u["dups"]) - len(u["unflagged"]),
            "duplicates_unflagged": len(u["unflagged"]),
            "jobs_flagged_possible_duplicate": u["flagged"],
            "completed_never_created": len(u["never_created"]),
            "creates_for_unknown_jobs": len(u["strangers"]),
        },
    }


def chaos_section(res: RunResult) -> dict[str, Any]:
    cl, info = res.cluster, res.drive_info
    return {
        "worker_kills": len(cl.kills),
        "worker_self_exits": len(cl.self_exits),
        "self_exits": cl.self_exits,
        "kills": cl.kills,
        "redis_restarts": cl.redis_restarts,
        "redis": info.get("redis"),
        "receiver_outage": {
            **(info.get("receiver") or {}),
            "for_s": res.opts.receiver_down_s,
            "modes": [o["mode"] for o in res.receiver.outages],
        },
        "api_exits": cl.api_exits,
        "elapsed_s": info.get("elapsed_s"),
    }


def evidence(j: dict[str, Any], w: dict[str, Any], u: dict[str, Any]) -> dict[str, Any]:
    """The first few of each kind of trouble, by job id."""
    return {
        "lost": j["lost"][:50],
        "not_terminal": cut(j["not_terminal"], 50),
        "not_completed": cut(j["not_completed"], 50),
        "completed_without_result": j["no_result"][:50],
        "undelivered": cut(w["undelivered"], 50),
        "batch_undelivered": w["batch"],
        "more_than_one_event": cut(w["extra"], 20),
        "more_than_one_webhook_id": cut(w["multi"], 20),
        "received_id_not_stored": cut(w["wrong"], 20),
        "unflagged_duplicates": cut(u["unflagged"], 50),
        "completed_never_created": u["never_created"][:50],
    }


def verdict(res: RunResult) -> dict[str, Any]:
    """The run's summary: ``ok``, the ``failures``, figures per area, the evidence."""
    j = job_checks(res)
    w = webhook_checks(res, j["finished"])
    u = upstream_checks(res, j["present"])
    failed = failures(res, j, w, u)
    return {
        "ok": not failed,
        "failures": failed,
        **sections(res, j, w, u),
        "chaos": chaos_section(res),
        "evidence": evidence(j, w, u),
        "timeline": res.drive_info.get("timeline", []),
    }


def step_evidence(r: redis.Redis, summary: dict[str, Any]) -> dict[str, Any]:
    """For each undelivered event and unfinished job: is something still
    scheduled to carry it on (an arq submit step queued or in progress, an
    entry in the poll or delivery index), or nothing at all (orphaned)?"""
    out: dict[str, Any] = {}
    ev = summary.get("evidence") or {}

    def step(arq_id: str) -> str:
        if r.exists(f"arq:in-progress:{arq_id}"):
            return "in progress"
        if r.zscore("interq:queue", arq_id) is not None:
            return "queued" if r.exists(f"arq:job:{arq_id}") else "queued, no arq:job key"
        return "none"

    def due(index: str, member: str) -> str:
        # the sync client's reply (redis-py types it Awaitable | Any)
        score = cast("float | None", r.zscore(f"{PREFIX}:{index}", member))
        return "none" if score is None else f"due in {float(score) / 1000 - time.time():.1f} s"

    for jid, info in (ev.get("undelivered") or {}).items():
        if isinstance(info, dict):
            out[jid] = {"event": info["id"], "delivery index": due("deliveries", info["id"])}
    for jid in ev.get("not_terminal") or {}:
        job: dict[str, str] = r.hgetall(KEYS.job(jid))  # type: ignore[assignment]
        iid = job.get("interaction_id", "")
        out[jid] = {
            "status": job.get("status"),
            "interaction_id": iid or None,
            "submit step": step(f"submit:{jid}"),
            "poll index": due("polls", jid) if iid else "-",
        }
    return out
