"""The chaos run's webhook receiver: verifies every delivery with ``standardwebhooks``
and can answer 503 or stop listening for an outage."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.common import free_port


@dataclass
class Received:
    webhook_id: str
    custom_id: str | None
    owner_id: str
    type: str
    verified: bool


class Receiver:
    """A webhook receiver on a fixed loopback port: verifies each delivery with the
    secret of its job (looked up by ``custom_id``) or of the batch, answers 204 or
    400; ``mode`` "503" answers 503 to everything, "down" closes the socket."""

    def __init__(self, secrets: dict[str, str], batch_secret: str) -> None:
        self.secrets = secrets
        self.batch_secret = batch_secret
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.requests = 0
        self.refused_503 = 0
        self.bad_signature = 0
        self.mode = "up"
        self.port = free_port()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.outages: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recv.lock:
                    recv.requests += 1
                    if recv.mode != "up":
                        recv.refused_503 += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                try:
                    body = json.loads(raw)
                    etype = str(body.get("type"))
                    data = body.get("data") or {}
                    custom_id = data.get("custom_id")
                    if etype.startswith("batch."):
                        secret = recv.batch_secret
                    else:
                        secret = recv.secrets.get(str(custom_id), "")
                    Webhook(secret).verify(raw, headers)
                    verified = True
                except (ValueError, WebhookVerificationError, AttributeError):
                    verified, etype, custom_id, data = False, "?", None, {}
                with recv.lock:
                    if not verified:
                        recv.bad_signature += 1
                    recv.received.append(
                        Received(
                            headers.get("webhook-id", ""),
                            custom_id,
                            str(data.get("id", "")),
                            etype,
                            verified,
                        )
                    )
                self.send_response(204 if verified else 400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        for _ in range(50):
            try:
                self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"webhook receiver could not bind 127.0.0.1:{self.port}")
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def set_mode(self, mode: str) -> None:
        """ "up", "503" (answer 503) or "down" (not listening)."""
        if mode == self.mode:
            return
        self.outages.append({"at": time.time(), "mode": mode})
        if mode == "down":
            self.stop()
        elif self.httpd is None:
            self.start()
        with self.lock:
            self.mode = mode

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)
