"""Webhook URLs whose address embeds or maps to a non-public IPv4 address
(6to4, NAT64, Teredo, IPv4-compatible, IPv4-mapped) or is site-local are
refused: at intake, as a literal or as what a name resolves to, and again at
delivery time, when a name that was fine at intake resolves to one. The Host
header of an IPv6 destination is bracketed."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.delivery import sender, url_safety
from jobs.delivery.engine import DeliveryEngine
from jobs.delivery.signing import generate_secret
from jobs.delivery.url_safety import Policy, UnsafeURL
from jobs.domain.lifecycle import finish
from jobs.domain.records import EventState
from jobs.domain.statuses import JobStatus
from jobs.services import Services
from jobs.settings import Settings
from tests.fakeclock import FakeClock, Upstream, clocked_services, reread, running_job, turn
from tests.helpers import job_body

REFUSED = {
    "2002:7f00:1::": "6to4 of 127.0.0.1",
    "2002:a9fe:a9fe::1": "6to4 of 169.254.169.254",
    "2002:a00:1::": "6to4 of 10.0.0.1",
    "64:ff9b::7f00:1": "NAT64 of 127.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 of 169.254.169.254",
    "64:ff9b:1::808:808": "local-use NAT64, whatever it embeds",
    "64:ff9b:1::7f00:1": "local-use NAT64 of 127.0.0.1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo, client 192.0.2.45",
    "2001:0:7f00:1:0:0:0:0": "Teredo, server 127.0.0.1",
    "2001:0:808:808:0:0:80ff:fefe": "Teredo, client 127.0.1.1",
    "fec0::1": "site-local",
    "fec0::a9fe:a9fe": "site-local",
    "::127.0.0.1": "IPv4-compatible 127.0.0.1",
    "::169.254.169.254": "IPv4-compatible 169.254.169.254",
    "::ffff:127.0.0.1": "IPv4-mapped 127.0.0.1",
    "::ffff:169.254.169.254": "IPv4-mapped 169.254.169.254",
    "::ffff:10.0.0.1": "IPv4-mapped 10.0.0.1",
}
PUBLIC = ["2002:808:808::", "64:ff9b::808:808", "::ffff:8.8.8.8", "2606:4700:4700::1111"]
NAME = "hooks.example"


@pytest.mark.parametrize("addr", list(REFUSED))
def test_each_form_is_not_public(addr: str) -> None:
    assert not url_safety.is_public(ipaddress.ip_address(addr)), REFUSED[addr]


@pytest.mark.parametrize("addr", PUBLIC)
def test_forms_of_public_addresses_stay_public(addr: str) -> None:
    assert url_safety.is_public(ipaddress.ip_address(addr))


def test_the_embedded_ipv4_addresses() -> None:
    def emb(a: str) -> list[str]:
        return [str(x) for x in url_safety.embedded_ipv4(ipaddress.IPv6Address(a))]

    assert emb("2002:a9fe:a9fe::1") == ["169.254.169.254"]
    assert emb("64:ff9b::7f00:1") == ["127.0.0.1"]
    assert emb("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert emb("::127.0.0.1") == ["127.0.0.1"]
    assert emb("::ffff:127.0.0.1") == ["127.0.0.1"]
    assert emb("::1") == [] and emb("2606:4700:4700::1111") == []


def resolving(table: dict[str, list[str]]) -> url_safety.Resolver:
    """A resolver answering from ``table`` (changed in place by the tests)."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return list(table[host])

    return resolve


async def test_a_name_resolving_to_any_form_is_refused_and_public_passes() -> None:
    table: dict[str, list[str]] = {}
    policy = Policy(resolver=resolving(table))
    for addr in REFUSED:
        table[NAME] = [addr]
        with pytest.raises(UnsafeURL):
            await url_safety.resolve(f"https://{NAME}/hook", policy)
        table[NAME] = ["93.184.216.34", addr]  # a public answer beside it does not help
        with pytest.raises(UnsafeURL):
            await url_safety.resolve(f"https://{NAME}/hook", policy)
    for addr in PUBLIC:
        table[NAME] = [addr]
        got = await url_safety.resolve(f"https://{NAME}/hook", policy)
        assert got == ipaddress.ip_address(addr)
    allowed = Policy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    got = await url_safety.resolve("http://[::ffff:127.0.0.1]/", allowed)
    assert got == ipaddress.ip_address("::ffff:127.0.0.1")


# --------------------------------------------------------------------------- intake


@asynccontextmanager
async def api_with(settings: Settings, table: dict[str, list[str]]) -> AsyncIterator[Any]:
    """The API refusing private destinations, resolving names from ``table``."""
    from api import create_app

    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    async with app.router.lifespan_context(app):
        app.state.svc.resolver = resolving(table)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            yield client


def assert_unsafe(r: httpx.Response) -> None:
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("unsafe_webhook_url", "invalid_batch"), r.text
    assert "non-public" in r.json()["error"]["message"], r.text


async def test_intake_refuses_every_form_as_a_literal_and_as_a_name(settings: Settings) -> None:
    table: dict[str, list[str]] = {}
    async with api_with(settings, table) as api:
        for addr in REFUSED:
            table[NAME] = [addr]
            for url in (f"http://[{addr}]:8080/hook", f"https://{NAME}/hook"):
                assert_unsafe(await api.post("/v1/jobs", json=job_body("x", webhook=url)))
                assert_unsafe(await api.put("/v1/webhook-endpoint", json={"url": url}))
                batch = {"jobs": [job_body("x", custom_id="1")], "webhook": {"url": url}}
                assert_unsafe(await api.post("/v1/batches", json=batch))
        r = await api.get("/v1/jobs")
        assert r.status_code == 200 and r.json()["data"] == []
        assert (await api.get("/v1/webhook-endpoint")).status_code == 404
        table[NAME] = ["2606:4700:4700::1111"]
        r = await api.post("/v1/jobs", json=job_body("x", webhook=f"https://{NAME}/hook"))
        assert r.status_code == 202, r.text


class Asked(dict[str, list[str]]):
    """A resolver's table that notes each host looked up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked: list[str] = []

    def __getitem__(self, host: str) -> list[str]:
        self.asked.append(host)
        return super().__getitem__(host)


async def test_a_batchs_webhook_hosts_are_resolved_once_each(settings: Settings) -> None:
    table = Asked({NAME: ["93.184.216.34"], "other.example": ["93.184.216.35"]})
    secret = generate_secret()

    def line(custom_id: str, url: str) -> dict[str, Any]:
        return {**job_body("x", custom_id=custom_id), "webhook": {"url": url, "secret": secret}}

    lines = [line(f"c{i}", f"https://{NAME}/hook/{i}") for i in range(300)]
    lines.append(line("o", "https://other.example/h"))
    async with api_with(settings, table) as api:
        r = await api.post("/v1/batches", json={"jobs": lines})
        assert r.status_code == 202, r.text
        assert sorted(table.asked) == [NAME, "other.example"]
        table[NAME] = ["10.0.0.1"]  # a host gone private still refuses the batch
        lines = [{**x, "custom_id": "n" + x["custom_id"]} for x in lines]
        assert_unsafe(await api.post("/v1/batches", json={"jobs": lines}))


# --------------------------------------------------------------------------- delivery


class Seen:
    """A MockTransport receiver: every request that got through, answered 204."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


@pytest.fixture()
async def svc(
    clean_redis: str, tmp_path: Path, upstream: Upstream
) -> AsyncIterator[tuple[Services, dict[str, list[str]], Seen]]:
    table: dict[str, list[str]] = {NAME: ["93.184.216.34"]}
    seen = Seen()
    async with clocked_services(
        clean_redis, tmp_path, upstream, webhook_allow_private=False, webhook_schedule_s=[5.0]
    ) as s:
        s.resolver = resolving(table)
        await s.http.aclose()
        s.http = httpx.AsyncClient(transport=httpx.MockTransport(seen.handle))
        yield s, table, seen


async def deliver_once(svc: Services, clock: FakeClock, url: str) -> str:
    """A completed job whose webhook goes to ``url``, one delivery turn: its event id."""
    job = await running_job(svc, clock, webhook=url)
    assert await finish(svc, job, JobStatus.completed)
    event_id = (await reread(svc, job.id)).event_id
    clock.advance(1.0)  # the outbox wrote the event due at the real now
    await turn(DeliveryEngine(svc, clock))
    return event_id


@pytest.mark.parametrize("addr", list(REFUSED))
async def test_a_name_fine_at_intake_that_resolves_to_a_form_later_is_not_sent(
    svc: tuple[Services, dict[str, list[str]], Seen], clock: FakeClock, addr: str
) -> None:
    s, table, seen = svc
    url = f"https://{NAME}/hook"
    assert str(await url_safety.resolve(url, s.webhook_policy)) == "93.184.216.34"  # intake
    table[NAME] = [addr]  # the name's answer changes before the attempt
    event_id = await deliver_once(s, clock, url)
    assert seen.requests == []
    event = await s.store.get_event(event_id)
    assert event is not None and event.state == EventState.pending and event.attempts == 1
    assert "non-public" in event.last_error
    [attempt] = await s.store.event_attempts(event_id)
    assert attempt["outcome"] == "failed" and attempt["status_code"] is None


async def test_the_host_header_of_an_ipv6_destination_is_bracketed(
    svc: tuple[Services, dict[str, list[str]], Seen], clock: FakeClock
) -> None:
    s, table, seen = svc
    table[NAME] = ["2606:4700:4700::1111"]
    await deliver_once(s, clock, f"https://{NAME}:8443/hook")
    await deliver_once(s, clock, "http://[2606:4700:4700::1111]:8080/hook")
    await deliver_once(s, clock, "http://[2606:4700:4700::1111]/hook")
    by_name, literal, no_port = seen.requests
    assert by_name.url.host == "2606:4700:4700::1111" and by_name.url.port == 8443
    assert by_name.headers["host"] == f"{NAME}:8443"
    assert by_name.extensions["sni_hostname"] == NAME
    assert literal.headers["host"] == "[2606:4700:4700::1111]:8080"
    assert no_port.headers["host"] == "[2606:4700:4700::1111]"


class V6Server(ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6


@pytest.fixture()
def v6_receiver() -> Iterator[tuple[int, list[str]]]:
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            hosts.append(self.headers.get("host", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = V6Server(("::1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hosts
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_real_ipv6_receiver_gets_a_bracketed_host(
    v6_receiver: tuple[int, list[str]],
) -> None:
    port, hosts = v6_receiver
    async with httpx.AsyncClient(follow_redirects=False) as client:
        res = await sender.post(
            client, f"http://[::1]:{port}/hook", [generate_secret()], "evt_1", b"{}",
            Policy(allow_private=True),
        )  # fmt: skip
    assert res.outcome == "delivered", res
    assert hosts == [f"[::1]:{port}"]
