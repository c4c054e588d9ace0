"""A step that runs past its time budget is retried, never dropped: arq treats
its own timeout as final, so interq's steps time themselves out first."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from jobs.settings import Settings
from jobs.webhooks import generate_secret
from tests.helpers import job_body, running_worker, wait_until


class SlowOnce:
    """A webhook receiver whose first request hangs far past the step timeout."""

    def __init__(self) -> None:
        self.calls = 0
        self.delivered: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.calls += 1
                if outer.calls == 1:
                    time.sleep(6)
                else:
                    outer.delivered.append(self.headers["webhook-id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


async def test_a_step_past_its_timeout_is_retried(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    slow = SlowOnce()
    cfg = settings.model_copy(update={"step_timeout_s": 2.0, "webhook_timeout_s": 30.0})
    body = job_body("x [sim duration=0.1]")
    body["webhook"] = {"url": slow.url, "secret": generate_secret()}
    try:
        async with running_worker(cfg) as w:
            jid = (await api.post("/v1/jobs", json=body)).json()["id"]
            await wait_until(lambda: slow.delivered, timeout=60, what="delivery after a timeout")
            assert w.jobs_failed == 0  # arq never saw a step fail
        log = (await api.get(f"/v1/jobs/{jid}/deliveries")).json()["data"][0]
        assert log["state"] == "delivered" and slow.delivered == [log["id"]]
    finally:
        slow.httpd.shutdown()
