"""A person's path through the demo in headless Chromium (Debian's, driven by Playwright):
open the page, be sent to sign in, paste a wrong token then the admin token, build and fill a
table in three messages, see three checkpoints, break some SQL, undo, restore the first
checkpoint, preview and diff, start over, sign out. The API and the demo are served together
over real HTTP, as `agentdb serve` serves them, over the embedded PostgreSQL and the local
plane. The screenshot for the README is taken on the way."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from demo_sign_in import ADMIN_TOKEN
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from demo import SIGN_IN_COOKIE, Chat, Demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's screenshot is refreshed only on request (UPDATE_DEMO_SCREENSHOT=1): a test run
# never rewrites a tracked file.
README_SCREENSHOT = Path(__file__).parents[2] / "docs" / "demo.png"
WAIT_MS = 20_000

CREATE = "create table todos with title text, done boolean"
FIRST_ROW = "insert into todos title=Buy milk, done=false"
SECOND_ROW = "insert into todos title='Walk the dog, twice', done=true"

# Developers without chromium skip these; CI (which installs it) never does.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, served_url: str) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1440, "height": 860})
    opened = await context.new_page()
    opened.set_default_timeout(WAIT_MS)
    await sign_in(opened, served_url)
    try:
        yield opened
    finally:
        await context.close()


async def sign_in(page: Page, served_url: str) -> None:
    """The page sends a browser that is not signed in to the sign-in form; a wrong token is
    told so, the admin token opens the demo, and the cookie it sets is out of the page's
    scripts' reach."""
    await page.goto(f"{served_url}/demo/")
    await expect(page).to_have_url(f"{served_url}/demo/sign-in")
    await page.get_by_test_id("token").fill("adb_admin_not-the-token")
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("sign-in-error")).to_contain_text("does not open the demo")
    await page.get_by_test_id("token").fill(ADMIN_TOKEN)
    await page.get_by_test_id("sign-in").click()
    await expect(page).to_have_url(f"{served_url}/demo/")
    await expect(page.get_by_test_id("agent-name")).to_be_visible()
    (cookie,) = [c for c in await page.context.cookies() if c["name"] == SIGN_IN_COOKIE]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in cookie["value"]
    assert SIGN_IN_COOKIE not in await page.evaluate("document.cookie")


async def say(page: Page, message: str) -> None:
    """Sends `message` and waits for the agent's answer to finish streaming."""
    done_before = await page.get_by_test_id("turn-done").count()
    await page.get_by_test_id("message").fill(message)
    await page.get_by_test_id("send").click()
    await expect(page.get_by_test_id("turn-done")).to_have_count(done_before + 1)


def checkpoint(page: Page, label: str) -> Locator:
    return page.locator(f'[data-testid="checkpoint"][data-label="{label}"]').first


async def expect_rows(page: Page, count: int, *, mode: str = "live") -> None:
    database = page.get_by_test_id("database")
    await expect(database).to_have_attribute("data-mode", mode)
    table = database.locator('[data-testid="table"][data-name="todos"]')
    await expect(table.get_by_test_id("row")).to_have_count(count)


def head(page: Page) -> Locator:
    return page.locator('[data-testid="checkpoint"][data-head="true"]')


async def build_a_table(page: Page, checkpoints: Locator) -> None:
    """Three messages: a table, then a row each. Every one becomes a checkpoint under the
    previous one, the newest is the head, and the database pane follows."""
    for number, message in enumerate((CREATE, FIRST_ROW, SECOND_ROW), 1):
        await say(page, message)
        await expect(checkpoints).to_have_count(1 + number)
        await expect(page.get_by_test_id("head")).to_have_count(1)
        await expect(head(page)).to_have_attribute("data-label", message)
    await expect(page.get_by_test_id("agent-message").last).to_contain_text("checkpoint saved")
    await expect_rows(page, 2)
    todos = page.locator('[data-testid="table"][data-name="todos"]')
    await expect(todos).to_contain_text("Walk the dog, twice")
    await expect(todos).to_contain_text("done boolean")


async def make_mistakes(page: Page, checkpoints: Locator) -> None:
    """Broken SQL gets PostgreSQL's own words and no checkpoint; so does a sentence the
    offline agent does not understand."""
    await say(page, "sql create tabel oops (x int)")
    answer = page.get_by_test_id("agent-message").last
    await expect(answer.get_by_test_id("error")).to_contain_text('syntax error at or near "tabel"')
    await expect(answer).to_contain_text("Nothing was changed.")
    await expect(checkpoints).to_have_count(4)
    await say(page, "please make it pretty")
    answer = page.get_by_test_id("agent-message").last
    await expect(answer.get_by_test_id("error")).to_contain_text("I understand a few commands")
    await expect(checkpoints).to_have_count(4)


async def preview_and_diff(page: Page, demo: Demo, chat: Chat) -> None:
    """Preview the third checkpoint (its two rows, read-only, while the live table is empty),
    then diff the first checkpoint with the third."""
    await checkpoint(page, SECOND_ROW).get_by_test_id("preview").first.click()
    await expect_rows(page, 2, mode="preview")
    await expect(page.get_by_test_id("database")).to_contain_text("Buy milk")
    assert chat.preview is not None
    await page.get_by_test_id("back-to-live").click()
    await expect_rows(page, 0)
    assert chat.preview is None  # the preview branch is deleted when the person leaves it

    await page.get_by_test_id("diff-from").select_option(label=CREATE)
    await page.get_by_test_id("diff-to").select_option(label=SECOND_ROW)
    await page.get_by_test_id("diff").click()
    result = page.get_by_test_id("diff-result")
    await expect(result.get_by_test_id("diff-summary")).to_contain_text("0 table(s) added")
    row = result.locator('[data-testid="diff-table"][data-name="public.todos"]')
    await expect(row.get_by_test_id("diff-rows")).to_have_text("0 → 2")
    await expect(row).to_contain_text("changed")
    # The rows themselves: both added, none removed (read through short-lived previews).
    changes = result.locator('[data-testid="row-changes"][data-name="public.todos"]')
    await expect(changes.get_by_test_id("row-added")).to_have_count(2)
    await expect(changes.get_by_test_id("row-removed")).to_have_count(0)
    await expect(changes).to_contain_text("Walk the dog, twice")
    branches = await demo.client.list_branches(chat.session_id)
    assert [b for b in branches if b.status.value not in {"deleted", "deleting"}] == []


async def test_a_person_builds_a_table_and_travels_its_checkpoints(
    page: Page, demo: Demo, tmp_path: Path
) -> None:
    await expect(page.get_by_test_id("agent-name")).to_contain_text("offline command agent")
    await expect(page.get_by_test_id("no-tables")).to_be_visible()
    checkpoints = page.get_by_test_id("checkpoint")
    # A new session starts with its root checkpoint (the empty database).
    await expect(checkpoints).to_have_count(1)
    await expect(checkpoint(page, "root")).to_have_attribute("data-head", "true")

    await build_a_table(page, checkpoints)
    # A reload shows the same chat, tree and tables (the cookie names the chat).
    await page.reload()
    await expect(page.get_by_test_id("agent-message")).to_have_count(3)
    await expect(page.get_by_test_id("agent-message").last).to_contain_text("checkpoint saved")
    await expect(checkpoints).to_have_count(4)
    await expect_rows(page, 2)
    await make_mistakes(page, checkpoints)

    # "undo" restores the head's parent through the tools: one row, no new checkpoint.
    await say(page, "undo")
    await expect_rows(page, 1)
    await expect(checkpoint(page, FIRST_ROW)).to_have_attribute("data-head", "true")
    await expect(checkpoints).to_have_count(4)

    # Restore the first checkpoint: the table is empty again, later checkpoints stay.
    await checkpoint(page, CREATE).get_by_test_id("restore").first.click()
    await expect(page.get_by_test_id("note").last).to_contain_text(f"Restored “{CREATE}”")
    await expect_rows(page, 0)
    await expect(checkpoint(page, CREATE)).to_have_attribute("data-head", "true")
    await expect(checkpoints).to_have_count(4)

    (chat,) = demo.chats.values()
    await preview_and_diff(page, demo, chat)

    # Building on the restored checkpoint forks the tree: the new checkpoint hangs under it.
    await say(page, "add column due date to todos")
    await expect(checkpoints).to_have_count(5)
    fork = checkpoint(page, "add column due date to todos")
    await expect(fork).to_have_attribute("data-head", "true")
    await expect(fork).to_have_attribute("data-parent-label", CREATE)
    await expect(page.locator("li.fork .fork-from")).to_have_text(f"fork from “{CREATE}”")

    # The README's screenshot: the forked tree, and a preview of the other side of the fork.
    await checkpoint(page, SECOND_ROW).get_by_test_id("preview").first.click()
    await expect_rows(page, 2, mode="preview")
    refresh = os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1"
    screenshot = README_SCREENSHOT if refresh else tmp_path / "demo.png"
    await page.screenshot(path=str(screenshot))
    assert 10_000 < screenshot.stat().st_size < 300_000

    # A new session starts empty; the old one is deleted.
    await page.get_by_test_id("new-session").click()
    await expect(checkpoints).to_have_count(1)
    await expect(page.get_by_test_id("no-tables")).to_be_visible()
    (new_chat,) = demo.chats.values()
    assert new_chat.session_id != chat.session_id

    # Signing out ends the sign-in and the chat's session; the page asks to sign in again.
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("token")).to_be_visible()
    assert demo.chats == {}
    await page.goto(page.url.replace("/sign-in", "/"))
    await expect(page.get_by_test_id("token")).to_be_visible()
