"""The demo's routes without a browser (httpx in-process, cookies kept): bad input and
impossible requests answer with a notice the page shows, change nothing and start no turn;
a browser whose chat is gone is told to reload."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from demo_sign_in import sign_in
from litestar import Litestar

from demo import Chat, Demo, create_demo_app, with_demo


@pytest_asyncio.fixture(loop_scope="session")
async def browser(api_app: Litestar, demo: Demo) -> AsyncIterator[httpx.AsyncClient]:
    app = with_demo(api_app, create_demo_app(demo))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://demo", timeout=60
    ) as client:
        await sign_in(client)
        assert (await client.get("/demo/")).status_code == 200
        yield client


def chat_of(demo: Demo, browser: httpx.AsyncClient) -> Chat:
    chat = demo.chat(browser.cookies["agentdb_demo"])
    assert chat is not None
    return chat


def assert_notice(response: httpx.Response, text: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["hx-reswap"] == "none"  # the page keeps what it shows
    assert 'id="notice" hx-swap-oob="true"' in response.text
    assert text in response.text


async def test_an_empty_message_starts_no_turn(browser: httpx.AsyncClient, demo: Demo) -> None:
    response = await browser.post("/demo/chat", data={"message": "   "})
    assert_notice(response, "type a message first")
    assert chat_of(demo, browser).turns == []


async def test_unknown_checkpoints_are_named_and_nothing_changes(
    browser: httpx.AsyncClient, demo: Demo
) -> None:
    chat = chat_of(demo, browser)
    before = await demo.client.get_session(chat.session_id)
    missing = uuid.uuid4()
    for path in (f"/demo/checkpoints/{missing}/restore", f"/demo/checkpoints/{missing}/preview"):
        assert_notice(await browser.post(path), "agentdb: ")
    after = await demo.client.get_session(chat.session_id)
    assert after.head_checkpoint_id == before.head_checkpoint_id
    assert chat.preview is None
    assert await demo.client.list_branches(chat.session_id) == []


async def test_a_diff_needs_two_states(browser: httpx.AsyncClient, demo: Demo) -> None:
    assert_notice(await browser.get("/demo/diff", params={"from": "nope"}), "pick a checkpoint")
    head = (await demo.client.get_session(chat_of(demo, browser).session_id)).head_checkpoint_id
    same = {"from": str(head), "to": str(head)}
    assert_notice(await browser.get("/demo/diff", params=same), "two different states")
    # The root against the live database: a real (empty) diff.
    response = await browser.get("/demo/diff", params={"from": str(head), "to": "HEAD"})
    assert 'data-testid="diff-result"' in response.text
    assert "No differences." in response.text


async def test_a_lost_chat_reloads_the_page(api_app: Litestar, demo: Demo) -> None:
    app = with_demo(api_app, create_demo_app(demo))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://demo"
    ) as stranger:
        await sign_in(stranger)
        stranger.cookies.set("agentdb_demo", "forgotten")
        for response in (
            await stranger.get("/demo/panels"),
            await stranger.post("/demo/chat", data={"message": "hello"}),
            await stranger.get("/demo/turns/1/events"),
        ):
            assert response.headers["hx-refresh"] == "true"
    assert "forgotten" not in demo.chats
