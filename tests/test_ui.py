"""The ops page: the summary endpoint and the page itself through the API, then
the page in a real headless Chromium against the service served over HTTP,
with a worker, the simulator and a webhook receiver: it shows jobs, a batch's
progress and a dead-lettered webhook, and its Redeliver button gets the event
delivered. The screenshot lands in ``test-artifacts/ui.png``.

The browser test needs the PyPI package ``playwright`` (its wheel ships the
driver; no ``playwright install``) and Debian's ``chromium``; without them it
fails, or skips when ``INTERQ_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from jobs.delivery.signing import generate_secret
from jobs.settings import Settings, hash_api_key
from tests.helpers import Receiver, running_worker, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
KEY = "ops-key-1"
OTHER_KEY = "other-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<img src=x onerror="document.body.dataset.pwned=1"><b>bold</b>'


def keyed(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"api_keys": {"ops": hash_api_key(KEY), "other": hash_api_key(OTHER_KEY)}}
    )


def sim_job(text: str, **extra: Any) -> dict[str, Any]:
    return {"interaction": {"model": "sim-model", "input": text}, **extra}


@pytest.fixture()
async def keyed_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from api import create_app

    app = create_app(keyed(settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            yield client


async def test_page_is_self_contained_and_locked_down(api: httpx.AsyncClient) -> None:
    r = await api.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page), "nothing fetched from elsewhere"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp, "the CSP admits exactly the page's own script"
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_summary_counts_and_tenant_auth(keyed_api: httpx.AsyncClient) -> None:
    assert (await keyed_api.get("/v1/ops/summary")).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert (await keyed_api.get("/v1/ops/summary", headers=bad)).status_code == 401

    for i in range(2):  # no worker: they stay queued
        r = await keyed_api.post("/v1/jobs", json=sim_job(f"x{i}"), headers=AUTH)
        assert r.status_code == 202
    r = await keyed_api.post(
        "/v1/batches",
        json={"jobs": [sim_job("b", custom_id=f"c{i}") for i in range(3)]},
        headers=AUTH,
    )
    bid = r.json()["id"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    await keyed_api.post("/v1/jobs", json=sim_job("theirs"), headers=other)

    mine = (await keyed_api.get("/v1/ops/summary", headers=AUTH)).json()
    assert mine["tenant"] == "ops"
    assert mine["queue_depth"] == 6 and mine["queue_depth_tenant"] == 5
    assert mine["jobs_by_status"]["queued"] == 6 and mine["jobs_by_status"]["failed"] == 0
    assert mine["in_flight_total"] == 0 and mine["oldest_in_flight_s"] is None
    [batch] = mine["batches"]
    assert batch["id"] == bid and batch["total"] == 3 and batch["done"] == 0

    theirs = (await keyed_api.get("/v1/ops/summary", headers=other)).json()
    assert theirs["queue_depth"] == 6 and theirs["queue_depth_tenant"] == 1
    assert theirs["batches"] == []  # another tenant's batch is not shown


# --------------------------------------------------------------------- browser
def browser() -> str:
    """Chromium's path, or fail (skip with INTERQ_SKIP_BROWSER=1) naming what is missing."""
    missing = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the PyPI package `playwright` (pip install playwright)")
    exe = os.environ.get("INTERQ_CHROMIUM") or shutil.which("chromium")
    if exe is None and Path("/usr/bin/chromium").exists():
        exe = "/usr/bin/chromium"
    if exe is None:
        missing.append("Debian's `chromium` (apt-get install chromium)")
    if missing:
        msg = "the ops page test needs " + " and ".join(missing)
        if os.environ.get("INTERQ_SKIP_BROWSER") == "1":
            pytest.skip(msg + " (INTERQ_SKIP_BROWSER=1)")
        pytest.fail(msg + "; or set INTERQ_SKIP_BROWSER=1 to skip it", pytrace=False)
    assert exe is not None
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """``create_app(settings)`` served by uvicorn on loopback, lifespan on, in a thread."""
    from api import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("the API did not start")
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("the API did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_ops_page_in_chromium(settings: Settings, receiver: Receiver, tmp_path: Path) -> None:
    exe = browser()
    cfg = keyed(settings)
    receiver.secret = generate_secret()
    receiver.fail_first = 10**6  # down until the button is clicked
    with serve(cfg) as base:
        async with (
            httpx.AsyncClient(base_url=base, headers=AUTH, trust_env=False) as http,
            running_worker(cfg),
        ):
            ids = await seed(http, {"url": receiver.url, "secret": receiver.secret})
            [ev] = await wait_until(
                lambda: dead_letters(http), timeout=20, interval=0.2, what="a dead letter"
            )
            assert ev["owner"] == f"job:{ids['hooked']}" and ev["attempts"] == 4
            async with chromium(exe, tmp_path) as page:
                problems = watch_problems(page)
                await sign_in(page, base)
                await check_lists(page, ids)
                await check_redeliver(page, ev, receiver, ids["hooked"])
                assert await page.evaluate("document.body.dataset.pwned") is None
                assert problems == []


async def seed(http: httpx.AsyncClient, hook: dict[str, Any]) -> dict[str, str]:
    """A hooked job (its receiver down), a failed one named with XSS, a slow one
    and a 4-line batch."""

    async def submit(body: dict[str, Any]) -> str:
        r = await http.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    ids = {
        "hooked": await submit(
            sim_job("hook me [sim duration=0.1]", custom_id="hooked", webhook=hook)
        ),
        "failed": await submit(sim_job("x [sim duration=0.1 outcome=failed]", custom_id=XSS)),
        "slow": await submit(sim_job("slow [sim duration=60]", custom_id="slow")),
    }
    lines = [sim_job(f"line {i} [sim duration=0.2]", custom_id=f"line-{i}") for i in range(4)]
    r = await http.post("/v1/batches", json={"jobs": lines})
    ids["batch"] = r.json()["id"]
    return ids


async def dead_letters(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await http.get("/v1/webhooks/dead-letters")).json()["data"]
    return data


@asynccontextmanager
async def chromium(exe: str, tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=exe,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx.pages[0] if ctx.pages else await ctx.new_page()
        finally:
            await ctx.close()


def watch_problems(page: Any) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: (
            problems.append(f"console: {m.text}")
            if m.type == "error" and "401" not in m.text
            else None
        ),
    )
    return problems


async def sign_in(page: Any, base: str) -> None:
    from playwright.async_api import expect

    await page.goto(base + "/ui")
    status = page.locator("#status")
    await expect(status).to_contain_text("Unauthorized")  # keys are configured
    await page.fill("#key", KEY)
    await page.click("#savekey")
    await expect(status).to_contain_text("updated")


async def check_lists(page: Any, ids: dict[str, str]) -> None:
    from playwright.async_api import expect

    jobs = page.locator("#jobs")
    for jid in (ids["hooked"], ids["failed"], ids["slow"]):
        await expect(jobs.locator(f'tr[data-key="{jid}"]')).to_be_visible()
    xss_row = jobs.locator(f'tr[data-key="{ids["failed"]}"]')
    await expect(xss_row.locator("td").nth(1)).to_have_text("failed")
    await expect(xss_row.locator("td").nth(2)).to_have_text(XSS)
    assert await jobs.locator("img, b").count() == 0
    batch = page.locator(f'#batches [data-key="{ids["batch"]}"]')
    await expect(batch).to_contain_text("4 / 4 · completed")
    await expect(page.locator("#inflight")).to_have_text("1")  # the slow one
    await expect(page.locator("#queue")).to_have_text("0")

    await page.select_option("#filter", "failed")
    await expect(jobs.locator("tr")).to_have_count(1)
    await expect(jobs.locator("tr")).to_have_attribute("data-key", ids["failed"])
    await page.select_option("#filter", "")
    await expect(jobs.locator("tr")).to_have_count(7)


async def check_redeliver(page: Any, ev: dict[str, Any], receiver: Receiver, hooked: str) -> None:
    from playwright.async_api import expect

    row = page.locator(f'#dead tr[data-key="{ev["id"]}"]')
    await expect(row).to_contain_text("job.completed")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "ui-dead-letter.png"), full_page=True)
    receiver.fail_first = 0  # the receiver is back
    await row.get_by_role("button", name="Redeliver").click()
    tracked = page.locator(f'#redelivered tr[data-key="{ev["id"]}"]')
    await expect(tracked.locator("td").nth(2)).to_have_text("delivered")
    await expect(row).to_have_count(0)
    await expect(page.locator("#dead-empty")).to_be_visible()

    got = [d for d in receiver.snapshot() if d.msg_id == ev["id"]]
    assert len(got) == 1 and got[0].verified
    assert got[0].body["data"]["id"] == hooked
    await expect(page.locator("#status")).to_contain_text("updated")
    await page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
