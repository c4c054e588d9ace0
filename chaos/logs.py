"""Reading the processes' logs: why a process died, error lines, tails."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")
IDS = re.compile(r"\b(job|evt|bat)_[0-9a-f]{32}\b")


BOX = " \t│╭╰╮╯─"
RUN_SUFFIX = re.compile(r"(\.\d+)?\.log$")  # the harness's <name>.log, <name>.<n>.log


def proc_name(log: Path) -> str:
    """The process a log is of (every run of it: ``worker-0.3.log`` -> ``worker-0``)."""
    return RUN_SUFFIX.sub("", log.name)


def plain(line: str) -> bool:
    """Not blank, not indented, not part of a rich traceback's box."""
    return bool(line) and line[0] not in BOX


EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def exit_reason(log: Path | None) -> str:
    """The exception a process died of: the last exception line of its log (with
    the lines a wrapped message continues on)."""
    try:
        text = log.read_text(errors="replace").splitlines() if log else []
    except OSError:
        return ""
    for i in range(len(text) - 1, -1, -1):
        if EXCEPTION.match(text[i]):
            rest = [ln.strip() for ln in text[i + 1 : i + 4] if plain(ln)]
            return " ".join([text[i].strip(), *rest])[:300]
    return next((compact(ln)[:300] for ln in reversed(text) if plain(ln)), "")


def log_errors(logs: list[Path]) -> tuple[dict[str, int], list[str]]:
    """Error lines per log, and up to 12 distinct ones as samples (ids cut; for a
    traceback, the exception that ends it)."""
    counts: dict[str, int] = {}
    samples: dict[str, None] = {}
    for p in logs:
        try:
            text = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, ln in enumerate(text):
            if ln.startswith("{"):  # the service logs JSON lines
                try:
                    rec = json.loads(ln)
                except ValueError:
                    rec = {}
                if rec.get("level") not in ("ERROR", "CRITICAL"):
                    continue
                exc = str(rec.get("exc_info") or "").strip().splitlines()
                key = f"{rec.get('logger')}: {rec.get('message')}" + (
                    f" [{exc[-1]}]" if exc else ""
                )
            elif ERROR_LINE.search(ln):
                if "Traceback" in ln:
                    ends = (j for j in range(i + 1, min(i + 400, len(text))) if plain(text[j]))
                    j = next(ends, None)
                    if j is not None:
                        more = [t.strip() for t in text[j + 1 : j + 3] if plain(t)]
                        ln = " ".join([text[j], *more])
                key = ln
            else:
                continue
            counts[p.name] = counts.get(p.name, 0) + 1
            key = IDS.sub(r"\1_…", key)[:300]
            if len(samples) < 12:
                samples.setdefault(f"{proc_name(p)}: {key}")
    return counts, list(samples)


def compact(line: str) -> str:
    """A JSON log line as "time level logger: message [exception]"."""
    if not line.startswith("{"):
        return line
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    exc = str(rec.get("exc_info") or "").strip().splitlines()
    extra = f" [{exc[-1]}]" if exc else ""
    return f"{rec.get('time')} {rec.get('level')} {rec.get('logger')}: {rec.get('message')}{extra}"


def tails(logs: list[Path], needles: list[str], lines: int = 15) -> str:
    """The last lines of each process's latest log (the API, Redis, each worker),
    and every line (of any log) naming one of ``needles``."""
    latest: dict[str, Path] = {}
    for p in logs:  # in start order: the last one per process wins
        latest[proc_name(p)] = p
    out = []
    for p in latest.values():
        try:
            text = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        out.append(f"----- {p} (last {lines} lines)")
        out.extend(compact(ln)[:400] for ln in text[-lines:])
    for needle in needles:
        hits = []
        for p in logs:
            with contextlib.suppress(OSError):
                hits += [
                    f"{p.name}: {compact(ln)[:400]}"
                    for ln in p.read_text(errors="replace").splitlines()
                    if needle in ln
                ]
        out.append(f"----- lines naming {needle}")
        out.extend(sorted(hits, key=lambda h: h.split(": ", 1)[1])[:40])
    return "\n".join(out)
