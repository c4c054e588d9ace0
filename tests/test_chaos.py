"""The chaos run, short: 100 jobs, 2 workers, 3 SIGKILLs, one Redis restart,
~20 % upstream faults and a brief webhook receiver outage lose nothing.

The same code as ``python -m chaos.run`` (its own redis-server, simulator, API and
workers as processes); only the sizes are smaller. Nothing here depends on timing:
the disruptions are triggered by progress and the run waits (bounded) for the end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from chaos.config import Options
from chaos.run import evidence_text, report, run


@pytest.mark.timeout(600)
def test_short_chaos_run_loses_nothing() -> None:
    summary = run(replace(Options().quick(), quiet=True))  # `python -m chaos.run --quick`
    if not summary["ok"]:
        pytest.fail(
            (report(summary) if "jobs" in summary else "; ".join(summary["failures"]))
            + f"\n\nseed {summary['seed']}\n{evidence_text(summary)}\n"
            + str(summary.get("log_tails", ""))
            + f"\nlogs kept in {summary['logs']}",
            pytrace=False,
        )
    jobs, hooks, upstream, chaos = (summary[k] for k in ("jobs", "webhooks", "upstream", "chaos"))
    assert jobs["lost"] == 0 and jobs["not_terminal"] == 0
    assert jobs["by_status"] == {"completed": 100}
    assert hooks["undelivered"] == 0 and hooks["max_distinct_webhook_ids_per_job"] == 1
    assert upstream["duplicates_unflagged"] == 0
    assert upstream["fault_share"] > 0  # the faults were on
    assert chaos["worker_kills"] == 3 and chaos["redis_restarts"] == 1
    assert chaos["worker_self_exits"] == 0
    assert "down" in chaos["receiver_outage"]["modes"]
