"""The Control UI and the tool loop, in headless Chromium: the agent picker, tool calls folded under the reply,
approvals answered from the page (Allow, Allow for session, Deny; also after a reload), and replies rendered as
Markdown with whatever the model writes kept inert."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient
from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.test_control_ui import base_url, expect, page, screenshot, ws_url

__all__ = ["page"]  # the browser fixture

EXPIRY = re.compile(r"expires in (9|10):\d\d")


def make_agent(settings: Settings) -> None:
    root = settings.agents_dir / "careful"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nUse pdftotext.")
    (root / "agent.toml").write_text('model = "claude-opus-5-5"\n[tools.approval]\n"read_*" = "ask"\n')


async def send(page: Any, text: str) -> None:
    await page.fill("#input", text)
    await page.press("#input", "Enter")


async def test_approvals_from_the_page_and_the_agent_picker(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings, page: Any, tmp_path: Path
) -> None:
    make_agent(settings)
    await page.goto(base_url(gateway))
    await expect(page.locator("#status")).to_have_text("connected")
    picker = page.locator("#agent")
    await expect(picker.locator("option")).to_have_text(["careful · claude-opus-5-5", "default · claude-sonnet-5-5"])
    await picker.select_option("careful")

    # Allow: the call waits, visibly, with the time left; once allowed it runs and the reply goes on.
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(tool_reply(call, text="Let me check."), Reply(text="Use **pdftotext**."))
    await send(page, "How do I read a PDF?")
    reply = page.locator(".msg.assistant").last
    prompt = reply.locator(".approval")
    await expect(prompt).to_be_visible()
    await expect(prompt).to_contain_text("Run read_skill?")
    await expect(prompt.locator(".expiry")).to_have_text(EXPIRY)
    fold = reply.locator(".tool").first
    await expect(fold.locator(".outcome")).to_have_text("waiting for approval")
    await expect(fold.locator(".tool-input")).to_have_text('{"name":"pdf"}')
    await screenshot(page, tmp_path, "approval")
    await prompt.locator("button[data-decision=allow_once]").click()
    await expect(fold.locator(".outcome")).to_have_text(re.compile(r"^ok · \d+ ms$"))
    await expect(prompt).to_have_count(0)
    await expect(reply.locator(".text strong")).to_have_text("pdftotext")
    await expect(reply.locator(".stats")).to_contain_text("$")
    await fold.locator("summary").click()
    await expect(fold.locator("pre.result")).to_have_text("Use pdftotext.")
    await screenshot(page, tmp_path, "tool-result")
    session_id = await page.locator("#sessions li[data-session]").first.get_attribute("data-session")
    await expect(picker).to_be_disabled()
    await expect(picker).to_have_value("careful")

    # Deny: the model reads that the user declined.
    fake.queue(tool_reply(tool_use("read_skill_file", {"name": "pdf", "path": "a.md"})), Reply(text="Understood."))
    await send(page, "read a.md")
    reply = page.locator(".msg.assistant").last
    await reply.locator(".approval button[data-decision=deny]").click()
    await expect(reply.locator(".tool .outcome")).to_have_text("denied")
    await expect(reply.locator(".text")).to_have_text("Understood.")

    # Allow for session: the same tool's next call (the next step) runs unasked.
    fake.queue(
        tool_reply(tool_use("read_skill", {"name": "pdf"})),
        tool_reply(tool_use("read_skill", {"name": "pdf"}, id="toolu_second")),
        Reply(text="Read twice."),
    )
    await send(page, "read it twice")
    reply = page.locator(".msg.assistant").last
    await reply.locator(".approval button[data-decision=allow_session]").click()
    await expect(reply.locator(".text")).to_have_text("Read twice.")
    await expect(reply.locator(".tool .outcome")).to_have_text([re.compile("^ok"), re.compile("^ok")])
    await expect(reply.locator(".approval")).to_have_count(0)

    async with GatewayClient.connect(ws_url(gateway)) as gw:
        history = await gw.history(session_id)
    assert [(c["name"], c["status"], c["decision"]) for c in history["toolCalls"]] == [
        ("read_skill", "done", "allow_once"),
        ("read_skill_file", "denied", "deny"),
        ("read_skill", "done", "allow_session"),
        ("read_skill", "done", "allow_session"),
    ]
    assert history["agentId"] == "careful" and fake.requests[0].body["model"] == "claude-opus-5-5"

    # Drawn again from history: one bubble per turn, its calls folded in it, the same outcomes.
    await page.reload()
    await expect(page.locator(".msg.assistant")).to_have_count(3)
    await expect(page.locator(".msg.assistant").first.locator(".tool .outcome")).to_have_text(
        re.compile(r"^ok · \d+ ms$")
    )
    await expect(page.locator(".msg.assistant").nth(1).locator(".tool .outcome")).to_have_text("denied")
    await expect(page.locator(".msg.assistant").first.locator(".text strong")).to_have_text("pdftotext")


async def test_an_approval_waiting_when_the_page_reloads_can_still_be_answered(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings, page: Any, tmp_path: Path
) -> None:
    make_agent(settings)
    await page.goto(base_url(gateway))
    await page.locator("#agent").select_option("careful")
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="Done after the reload."))
    await send(page, "read the pdf skill")
    await expect(page.locator(".approval")).to_be_visible()
    await page.reload()  # the socket that sent the turn goes away; the turn waits on
    prompt = page.locator(".msg.assistant .approval")
    await expect(prompt).to_be_visible()
    await expect(prompt.locator(".expiry")).to_have_text(EXPIRY)
    await prompt.locator("button[data-decision=allow_once]").click()
    reply = page.locator(".msg.assistant").last
    await expect(reply.locator(".tool .outcome")).to_have_text(re.compile("^ok"))
    await expect(reply.locator(".text")).to_have_text("Done after the reload.")
    await expect(reply.locator(".stats")).to_contain_text("$")


INJECTION = """# Heading

Some **bold** text, `inline code` and a list:

- one
- two

<script>window.__pwned = "script"</script>

<img src="x" onerror="window.__pwned = 'img'">

Inline: <a href="javascript:window.__pwned='raw link'">raw link</a> and <b onclick="window.__pwned='b'">bold</b>.

[a script link](javascript:window.__pwned='link') and [the docs](https://example.com/docs)

![a tracker](https://tracker.example/pixel.png)

```python
def hello():
    return "world"
```
"""


async def check_inert(reply: Any, page: Any) -> None:
    markdown = reply.locator(".text.markdown")
    await expect(markdown.locator("h1")).to_have_text("Heading")
    await expect(markdown.locator("strong")).to_have_text("bold")
    await expect(markdown.locator("li")).to_have_text(["one", "two"])
    await expect(markdown.locator("script, img, iframe, [onerror], [style]")).to_have_count(0)
    # Raw HTML is shown as the text it is, never parsed.
    await expect(markdown).to_contain_text('<script>window.__pwned = "script"</script>')
    await expect(markdown).to_contain_text("<img src=")
    for text in ("a script link", "raw link"):
        assert await markdown.locator("a", has_text=text).count() == 0 or not await markdown.locator(
            "a", has_text=text
        ).get_attribute("href")
    docs = markdown.locator("a", has_text="the docs")
    assert await docs.get_attribute("href") == "https://example.com/docs"
    assert await docs.get_attribute("target") == "_blank"
    assert await docs.get_attribute("rel") == "noopener noreferrer nofollow"
    await expect(markdown.locator("a", has_text="[image: a tracker]")).to_have_attribute(
        "href", "https://tracker.example/pixel.png"
    )
    code = markdown.locator("pre code.language-python")
    await expect(code).to_contain_text('return "world"')
    assert await code.locator("span.hljs-keyword").count() >= 1
    font = await code.evaluate("node => getComputedStyle(node).fontFamily")
    assert "mono" in font.lower() or "consolas" in font.lower()
    assert await page.evaluate("() => window.__pwned") is None


async def test_a_markdown_reply_renders_and_an_injection_stays_inert(
    gateway: Gateway, fake: FakeAnthropic, page: Any, tmp_path: Path
) -> None:
    await page.goto(base_url(gateway))
    await expect(page.locator("#status")).to_have_text("connected")
    fake.queue(Reply(text=INJECTION, thinking=None, chunk_words=3))
    await send(page, "show me markdown")
    reply = page.locator(".msg.assistant").last
    await expect(reply.locator(".stats")).to_contain_text("$")
    await check_inert(reply, page)
    await screenshot(page, tmp_path, "markdown")
    await page.reload()  # drawn from history: the same
    await check_inert(page.locator(".msg.assistant").last, page)


def test_the_vendored_libraries_are_the_recorded_ones() -> None:
    """static/vendor/README.md records each vendored file's package, version, licence and SHA-256: a file changed by
    hand (or updated without the record) fails here."""
    vendor = Path(__file__).parent.parent / "gateway" / "server" / "static" / "vendor"
    record = (vendor / "README.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in vendor.iterdir() if p.suffix in (".js", ".css"))
    assert files == [
        "highlight-github-dark.min.css",
        "highlight-github.min.css",
        "highlight.min.js",
        "marked.esm.js",
        "purify.es.js",
    ]
    for name in files:
        assert f"`{name}`" in record
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() in record, name
    for licence in ("LICENSE.marked", "LICENSE.dompurify", "LICENSE.highlightjs"):
        assert (vendor / licence).is_file() and f"`{licence}`" in record
