"""The chaos run's table, its evidence in text, and its summary file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import ROOT, table
from chaos.config import RESULTS, STATUSES


def report(s: dict[str, Any]) -> str:
    j, w, u, c = s["jobs"], s["webhooks"], s["upstream"], s["chaos"]
    rd = c.get("redis") or {}

    def mark(bad: bool) -> str:
        return "FAIL" if bad else "ok"

    rows: list[tuple[str, ...]] = [
        (
            "jobs submitted",
            f"{j['submitted']} ({j['single']} single, {j['in_batch']} in a batch)",
            "",
        ),
        ("jobs lost (no record)", str(j["lost"]), mark(j["lost"] > 0)),
        ("jobs not terminal", str(j["not_terminal"]), mark(j["not_terminal"] > 0)),
    ]
    for status in STATUSES:
        if j["by_status"].get(status):
            rows.append((f"  {status}", str(j["by_status"][status]), ""))
    rows += [
        ("completed without a result", str(j["completed_without_result"]),
         mark(j["completed_without_result"] > 0)),
        ("webhook events expected", f"{w['expected']} (one per finished job)", ""),
        ("  delivered", str(w["delivered"]), ""),
        ("  undelivered", str(w["undelivered"]), mark(w["undelivered"] > 0)),
        ("  batch.completed", str((w["batch_event"] or {}).get("state", "-")), ""),
        ("distinct webhook-ids per job (max)", str(w["max_distinct_webhook_ids_per_job"]),
         mark(w["jobs_with_more_than_one_webhook_id"] > 0)),
        ("events received more than once", f"{w['events_received_more_than_once']} "
         "(at-least-once; same webhook-id)", ""),
        ("  needing more than one attempt", str(w["events_needing_more_than_one_attempt"]), ""),
        ("receiver: requests / answered 503 / bad sig",
         f"{w['receiver_requests']} / {w['receiver_answered_503']} / {w['bad_signatures']}",
         mark(w["bad_signatures"] > 0)),
        ("upstream requests / faulted",
         f"{u['requests']} / {u['fault_share']:.0%} {u['faults']}", ""),
        ("upstream creates", str(u["creates"]), ""),
        ("jobs created more than once", f"{u['jobs_created_more_than_once']} "
         f"(+{u['extra_creates']} creates)", ""),
        ("  flagged possible_duplicate", str(u["duplicates_flagged"]), ""),
        ("  unflagged", str(u["duplicates_unflagged"]), mark(u["duplicates_unflagged"] > 0)),
        ("jobs flagged possible_duplicate", str(u["jobs_flagged_possible_duplicate"]), ""),
        ("worker SIGKILLs", str(c["worker_kills"]), ""),
        ("workers that exited by themselves", str(c["worker_self_exits"]), ""),
        ("redis restarts", f"{c['redis_restarts']} (readyz while down: "
         f"{rd.get('readyz_while_down')}, ready {rd.get('api_ready_after_s')} s after)", ""),
        ("API exits", str(len(c["api_exits"])), mark(bool(c["api_exits"]))),
        ("chaos phase", f"{c['elapsed_s']} s", ""),
    ]  # fmt: skip
    body = table([("check", "value", ""), *rows])
    for ex in c.get("self_exits") or []:
        body += (
            f"\n  worker {ex['worker']} exited at t={ex['t']}s ({ex['returncode']}): {ex['reason']}"
        )
    verdict_line = (
        "RESULT: nothing lost" if s["ok"] else "RESULT: FAILED: " + "; ".join(s["failures"])
    )
    return f"{body}\n\n{verdict_line}"


def evidence_text(summary: dict[str, Any], per_kind: int = 10) -> str:
    """The evidence, one line per job (the first few of each kind), with whether a
    step is still scheduled for it."""
    ev = {k: v for k, v in (summary.get("evidence") or {}).items() if v}
    steps = ev.pop("steps", {})
    out = []
    for kind, items in ev.items():
        if not isinstance(items, dict | list):
            out.append(f"{kind}: {json.dumps(items, separators=(',', ':'), default=str)}")
            continue
        out.append(f"{kind} ({len(items)}{'+' if len(items) >= 50 else ''}):")
        rows = items.items() if isinstance(items, dict) else ((x, None) for x in items)
        for n, (key, val) in enumerate(rows):
            if n == per_kind:
                out.append(f"  ... (see {RESULTS.relative_to(ROOT)}/last.json)")
                break
            line = f"  {key}"
            if val is not None:
                line += " " + json.dumps(val, separators=(",", ":"), default=str)[:300]
            if key in steps:
                line += "  steps: " + json.dumps(steps[key], separators=(",", ":"))
            out.append(line)
    return ("evidence:\n" + "\n".join(out)) if out else ""


def save(summary: dict[str, Any], quick: bool = False) -> Path:
    """``chaos/results/last.json`` (``quick.json`` for a --quick run), git-ignored."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("quick.json" if quick else "last.json")
    out = {k: v for k, v in summary.items() if k != "log_tails"}
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path
