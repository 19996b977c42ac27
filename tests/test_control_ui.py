"""The web Control UI end to end in headless Chromium (Debian's package, driven by Playwright for Python).

The browser talks to a real gateway app over its same-origin WebSocket; every number the UI shows is compared with
what the protocol answers to the same question.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply

CHROMIUM = Path(os.environ.get("AGENTSPACE_CHROMIUM", "/usr/bin/chromium"))
# The flags the machine notes ask for: no sandbox as root, and no background traffic the closed network would refuse.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright (a dev dependency) is not installed")
expect = playwright_api.expect


def require_chromium() -> None:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it) to run the browser tests"
        if os.environ.get("AGENTSPACE_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    require_chromium()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        tab = await context.new_page()
        # Each wait ends as soon as the page is ready; 10 s ran out once at load 6 on 2 cores (issue 18: margins that
        # hold on a loaded machine).
        tab.set_default_timeout(30_000)
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield tab
        await browser.close()
    assert errors == [], f"the page logged errors: {errors}"


async def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    """Always into the test's tmp dir; also into $AGENTSPACE_UI_SCREENSHOTS when set, for a person to look at."""
    await page.screenshot(path=str(tmp_path / f"{name}.png"))
    folder = os.environ.get("AGENTSPACE_UI_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"))


def base_url(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/"))


def ws_url(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/gateway"))


async def cell(page: Any, selector: str) -> tuple[str, str]:
    """A table cell's raw value (data-value) and what it shows."""
    node = page.locator(selector)
    return await node.get_attribute("data-value"), (await node.inner_text()).strip()


async def test_chat_streams_and_the_inspector_and_usage_match_the_protocol(
    gateway: Gateway, fake: FakeAnthropic, page: Any, tmp_path: Path
) -> None:
    await page.goto(base_url(gateway))
    await expect(page.locator("#status")).to_have_text("connected")

    # Type a message; the reply appears while it is still streaming (held mid-way upstream), then completes.
    fake.queue(
        Reply(
            text="alpha beta gamma delta",
            thinking="Considering WAL.",
            hold_after_deltas=2,
            input_tokens=1200,
            output_tokens=40,
        )
    )
    await page.fill("#input", "What is WAL mode?")
    await page.press("#input", "Enter")
    await fake.wait_held()
    reply = page.locator(".msg.assistant").last
    await expect(reply.locator(".text")).to_have_text("alpha beta ")
    await expect(reply).to_have_class("msg assistant streaming")
    await expect(page.locator("#stop")).to_be_visible()
    await screenshot(page, tmp_path, "streaming")
    fake.release()
    await expect(reply.locator(".text")).to_have_text("alpha beta gamma delta")
    await expect(reply.locator(".thinking pre")).to_have_text("Considering WAL.")
    await expect(reply.locator(".stats")).to_contain_text("1,200 in · 40 out · $")
    await expect(page.locator("#send")).to_be_visible()
    sidebar = page.locator("#sessions li[data-session]")
    await expect(sidebar).to_have_count(1)
    await expect(sidebar.first).to_contain_text("What is WAL mode?")
    session_id = await sidebar.first.get_attribute("data-session")

    async with GatewayClient.connect(ws_url(gateway)) as gw:
        spent = (await gw.usage(session_id=session_id))["grandTotal"]["totalCost"]
        await expect(reply.locator(".stats")).to_contain_text(f"${spent:.6f}")

        # The inspector shows exactly what the protocol's context.inspection says, section by section.
        await page.click("[data-view=context]")
        await expect(page.locator("#inspect-table")).to_be_visible()
        inspection = await gw.inspect(session_id)
        await screenshot(page, tmp_path, "inspector")
        for section in [*inspection["sections"], {"name": "total", **inspection["totals"]}]:
            row = f"#inspect-table tr[data-section={section['name']}]"
            raw, shown = await cell(page, f"{row} td[data-field=bytes]")
            assert (int(raw), shown) == (section["byteCount"], f"{section['byteCount']:,}")
            raw, shown = await cell(page, f"{row} td[data-field=tokens]")
            assert (int(raw), shown) == (section["tokenEstimate"], f"{section['tokenEstimate']:,}")
            raw, shown = await cell(page, f"{row} td[data-field=cost]")
            assert (float(raw), shown) == (section["costEstimate"], f"${section['costEstimate']:.6f}")
            if section["name"] != "total" and section["tokenEstimate"]:
                segment = page.locator(f".stack .segment[data-section={section['name']}]")
                assert int(await segment.get_attribute("data-tokens")) == section["tokenEstimate"]
        raw, shown = await cell(page, "#window-share")
        assert float(raw) == inspection["windowShare"] and shown == f"{100 * inspection['windowShare']:.4f}%"

        # The usage page: the per-model row and today's bar are the usage report's numbers.
        await page.click("[data-view=usage]")
        await expect(page.locator("#usage-table")).to_be_visible()
        report = await gw.usage(group_by="day")
        model = report["perModel"]["claude-sonnet-5-5"]
        row = "#usage-table tr[data-model=claude-sonnet-5-5]"
        assert await cell(page, f"{row} td[data-field=requests]") == (str(model["requestCount"]), "1")
        assert await cell(page, f"{row} td[data-field=output]") == ("40", "40")
        raw, shown = await cell(page, f"{row} td[data-field=cost]")
        assert (float(raw), shown) == (model["totalCost"], f"${model['totalCost']:.6f}")
        today = datetime.now(UTC).date().isoformat()
        bar = page.locator(f"#cost-chart rect[data-day='{today}']")
        assert float(await bar.get_attribute("data-cost")) == report["groups"][-1]["totalCost"]
        await screenshot(page, tmp_path, "usage")

        # Sidebar: a new chat, switching back to the first one, and deleting it.
        await page.click("[data-view=chat]")
        await page.click("#new-chat")
        await page.fill("#input", "second question")
        await page.press("#input", "Enter")
        await expect(page.locator(".msg.assistant .text").last).to_have_text("You said: second question")
        await expect(sidebar).to_have_count(2)
        await page.click(f"#sessions li[data-session='{session_id}'] .open")
        await expect(page.locator(".msg.user .text")).to_have_text(["What is WAL mode?"])
        await expect(page.locator(".msg.assistant .text")).to_have_text(["alpha beta gamma delta"])
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click(f"#sessions li[data-session='{session_id}'] .delete")
        await expect(sidebar).to_have_count(1)
        assert [s["title"] for s in (await gw.sessions())["sessions"]] == ["second question"]


async def test_token_prompt_when_the_gateway_needs_one(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings, page: Any, tmp_path: Path
) -> None:
    gateway = await gateway_factory(replace(settings, token="ui-test-token-0123456789"))
    await page.goto(base_url(gateway))
    dialog = page.locator("#token-dialog")
    await expect(dialog).to_be_visible()
    await page.fill("#token-input", "wrong")
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#token-error")).to_have_text("That token was not accepted.")
    await screenshot(page, tmp_path, "token")
    await page.fill("#token-input", "ui-test-token-0123456789")
    await page.click("#token-form button[type=submit]")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#sessions")).to_contain_text("No sessions yet")


async def test_the_page_its_files_and_the_other_routes_are_served(gateway: Gateway) -> None:
    page = await gateway.client.get("/")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    modules = ("app.js", "gateway.js", "inspector.js", "usage.js", "format.js", "chat.js", "history.js", "turn.js")
    vendored = ("vendor/marked.esm.js", "vendor/purify.es.js", "vendor/highlight.min.js")
    for name in (*modules, "tools.js", "markdown.js", *vendored):
        script = await gateway.client.get(f"/static/{name}")
        assert script.status == 200 and "javascript" in script.headers["Content-Type"]
    assert (await gateway.client.get("/static/../app.py")).status in (403, 404)
    assert (await gateway.client.get("/healthz")).status == 200
    assert (await gateway.client.get("/metrics")).status == 200
