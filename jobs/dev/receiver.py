"""One webhook receiver: a real HTTP server on loopback, in a thread.

It records every request (headers, raw body, parsed JSON, whether its Standard
Webhooks signature verified) and can be told to misbehave: answer a given
status to everything, answer 503 to the first N requests, be slow, or be down
(not listening, then listening again on the same port); ``set_mode`` switches
between up, down and a status, and notes each switch in ``outages``. The tests, the
benchmarks, the chaos run and ``interq receiver`` all use it.

    with Receiver(secret) as r:           # start() ... stop()
        submit(..., webhook={"url": r.url, "secret": secret})
        r.wait_for(lambda ds: len(ds) >= 3, timeout=60)

Signatures are checked with the ``standardwebhooks`` library, unchanged. The
secret for a delivery is ``secret_for(body)`` if given, else ``secrets[data.id]``,
else ``secret``. With ``require_signature`` (the default) a delivery that does
not verify is answered 400, else 204.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Delivery:
    """One request the receiver answered with its normal answer (204/400)."""

    msg_id: str
    verified: bool
    body: Any  # the parsed JSON ({} when the body is not JSON)
    headers: dict[str, str]  # lower-case names
    raw: bytes = b""
    path: str = ""
    status: int = 204
    at: float = 0.0  # time.time() on arrival

    @property
    def type(self) -> str:
        return str(self.body.get("type", "")) if isinstance(self.body, dict) else ""

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, dict) else {}

    @property
    def owner_id(self) -> str:
        """The job or batch the event is about (``data.id``)."""
        return str(self.data.get("id", ""))


class Receiver:
    """A Standard Webhooks receiver on ``host:port`` (port 0: a free one, kept
    across ``down()`` / ``up()``)."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        fail_first: int = 0,
        port: int = 0,
        host: str = "127.0.0.1",
        path: str = "/hook",
        secret_for: Callable[[Any], str | None] | None = None,
        require_signature: bool = True,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.secret = secret
        self.secrets: dict[str, str] = {}  # job/batch id -> secret, when not one shared
        self.secret_for = secret_for
        self.require_signature = require_signature
        self.on_delivery = on_delivery
        self.fail_first = fail_first  # answer 503 to the first N requests
        self.status: int | None = None  # answer this to every request (e.g. 503)
        self.delay_s = 0.0  # wait this long before answering (a slow receiver)
        self.host, self.port, self.path = host, port, path
        self.requests = 0  # every request, whatever it was answered
        self.refused = 0  # answered with fail_first / status instead of 204/400
        self.bad_signature = 0
        self.deliveries: list[Delivery] = []
        self.outages: list[dict[str, Any]] = []  # {"at": time.time(), "mode": ...} a switch
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    def start(self) -> Receiver:
        """Listen (again, on the same port after ``down``)."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self.port), self._handler())
        httpd.daemon_threads = True
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        # serve_forever notices shutdown() within poll_interval (0.5 s by default)
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until ``start``)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    down = stop
    up = start

    @property
    def mode(self) -> str:
        """ "down" (not listening), "up" (answering normally) or the status it
        answers to every request (e.g. "503")."""
        if self._httpd is None:
            return "down"
        return "up" if self.status is None else str(self.status)

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (see ``mode``), noting the switch in ``outages``."""
        if mode == self.mode:
            return
        self.outages.append({"at": time.time(), "mode": mode})
        if mode == "down":
            self.stop()
            return
        self.status = None if mode == "up" else int(mode)
        self.start()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- reading what arrived
    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def wait_for(
        self, check: Callable[[list[Delivery]], Any], timeout: float = 60.0, what: str = ""
    ) -> Any:
        """Block until ``check(deliveries)`` is truthy (re-checked on each
        delivery); returns its value, or raises TimeoutError at the deadline."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                value = check(list(self.deliveries))
                if value:
                    return value
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for {what or 'deliveries'}")
                self._changed.wait(left)

    # -- answering
    def _secret(self, body: Any) -> str | None:
        if self.secret_for is not None:
            return self.secret_for(body)
        data = body.get("data") if isinstance(body, dict) else None
        owner = str(data.get("id", "")) if isinstance(data, dict) else ""
        return self.secrets.get(owner) or self.secret

    def _refusal(self) -> int | None:
        with self.lock:
            self.requests += 1
            status = self.status
            if status is None and self.requests <= self.fail_first:
                status = 503
            if status is not None:
                self.refused += 1
            return status

    def _record(self, raw: bytes, headers: dict[str, str], path: str) -> int:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = {}
        secret = self._secret(body)
        verified = False
        if secret:
            try:
                Webhook(secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                pass
        status = 204 if verified or not self.require_signature else 400
        d = Delivery(headers.get("webhook-id", ""), verified, body, headers, raw, path, status)
        d.at = time.time()
        with self._changed:
            self.bad_signature += 0 if verified else 1
            self.deliveries.append(d)
            self._changed.notify_all()
        if self.on_delivery is not None:
            self.on_delivery(d)
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if recv.delay_s:
                    time.sleep(recv.delay_s)  # behaving slowly is the point here
                refusal = recv._refusal()
                status = refusal or recv._record(raw, headers, self.path)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
