"""The demo is not an open door: every route but the sign-in page and the static files needs a
sign-in (or an admin or user token as a bearer header); without one a browser is sent to sign
in, anything else gets a 401, and nothing is created. The sign-in cookie is HttpOnly and
SameSite=Strict and is not the token; requests from another site are refused; failed sign-ins
are throttled; the demo keeps at most its cap of sessions; it listens beyond loopback only with
AGENTDB_ADMIN_TOKEN configured."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from demo_sign_in import ADMIN_TOKEN, sign_in
from litestar import Litestar
from pydantic import SecretStr

from agentdb.runtime import Runtime
from agentdb.settings import Settings
from demo import (
    SIGN_IN_COOKIE,
    Demo,
    OfflineAgent,
    SessionCapReached,
    create_demo_app,
    listen_refusal,
    open_demo,
    with_demo,
)
from demo._auth import MAX_FAILURES
from demo._chat import CHAT_IDLE

PUBLIC = {"/demo/sign-in", "/demo/static"}
_PARAM = re.compile(r"\{(\w+):(\w+)\}")


def guarded_requests(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every route of the demo app that must need a sign-in, read from the
    app itself so that a route added later is covered too."""
    found = []
    for route in app.routes:
        if not route.path.startswith("/demo") or any(route.path.startswith(p) for p in PUBLIC):
            continue
        path = _PARAM.sub(lambda m: str(uuid.uuid4()) if m[2] == "uuid" else "1", route.path)
        path = "/demo/" if path == "/demo" else path
        found.extend(
            (method, path) for method in sorted(route.methods) if method not in {"HEAD", "OPTIONS"}
        )
    return found


def client(app: object, base_url: str = "http://demo", **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, **kwargs),  # type: ignore[arg-type]
        base_url=base_url,
        timeout=60,
    )


async def live_sessions(demo: Demo) -> set[str]:
    """The ids of the demo user's live sessions. Every demo in the run acts as that one user, and
    sessions an earlier demo left are deleted in the background meanwhile: tests compare which
    ids are new, not how many there are."""
    return {str(s.id) for s in await demo.client.list_sessions() if s.deleted_at is None}


@pytest.fixture
def app(api_app: Litestar, demo: Demo) -> object:
    return with_demo(api_app, create_demo_app(demo))


async def test_every_route_refuses_a_stranger_and_creates_nothing(app: object, demo: Demo) -> None:
    requests = guarded_requests(create_demo_app(demo))
    assert ("GET", "/demo/") in requests
    assert ("POST", "/demo/chat") in requests
    assert len(requests) >= 10
    sessions, chats = await live_sessions(demo), set(demo.chats)
    async with client(app) as stranger:
        stranger.headers["Origin"] = "http://demo"
        for method, path in requests:
            # A program: 401 problem+json, asking for a bearer token.
            response = await stranger.request(method, path, data={"message": "create table x"})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["www-authenticate"].startswith("Bearer")
            # htmx (the page's own requests): 401, and htmx is told to go to the sign-in page.
            response = await stranger.request(method, path, headers={"HX-Request": "true"})
            assert response.status_code == 401, (method, path)
            assert response.headers["hx-redirect"] == "/demo/sign-in"
            if method == "GET":
                # A browser opening a page: sent to sign in.
                response = await stranger.get(path, headers={"Accept": "text/html"})
                assert response.status_code == 303, (path, response.text)
                assert response.headers["location"] == "/demo/sign-in"
            assert SIGN_IN_COOKIE not in stranger.cookies
            assert "agentdb_demo" not in stranger.cookies
        # What the sign-in page needs is served to anyone; it shows no data.
        assert (await stranger.get("/demo/sign-in")).status_code == 200
        assert (await stranger.get("/demo/static/htmx.min.js")).status_code == 200
    assert set(demo.chats) == chats
    assert await live_sessions(demo) - sessions == set()


async def test_wrong_and_session_tokens_are_refused(
    app: object, demo: Demo, runtime: Runtime
) -> None:
    chat = await demo.new_chat()
    session_token = await runtime.tokens.issue_session_token(chat.session_id)
    sessions = await live_sessions(demo)
    wrong = [
        "adb_admin_" + "y" * 43,
        ADMIN_TOKEN + "x",
        session_token.token.get_secret_value(),  # an agent's token never opens the demo
        "x" * 5000,
    ]
    # Its own address: these failures must not hold up the other tests' sign-ins.
    async with client(app, client=("198.51.100.1", 4000)) as stranger:
        stranger.headers["Origin"] = "http://demo"
        for token in wrong:
            response = await stranger.post("/demo/sign-in", data={"token": token})
            assert response.status_code == 401
            assert "does not open the demo" in response.text
            assert SIGN_IN_COOKIE not in stranger.cookies
            response = await stranger.get("/demo/", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401
            assert "does not open the demo" in response.json()["detail"]
        response = await stranger.get("/demo/", headers={"Authorization": "Basic eDp5"})
        assert response.status_code == 401
        response = await stranger.post("/demo/sign-in", data={"token": " "})
        assert response.status_code == 401
        assert "paste a token first" in response.text
        # A forged cookie signs no one in.
        stranger.cookies.set(SIGN_IN_COOKIE, ADMIN_TOKEN)
        assert (await stranger.get("/demo/panels")).status_code == 401
    assert await live_sessions(demo) - sessions == set()
    demo.drop_chat(chat)


async def test_a_bearer_token_opens_the_demo_without_a_cookie(app: object, demo: Demo) -> None:
    async with client(app) as program:
        program.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        page = await program.get("/demo/")
        assert page.status_code == 200, page.text
        assert 'data-testid="agent-name"' in page.text
        # A bearer header cannot be sent by another site's page: no Origin is asked for.
        response = await program.get("/demo/panels")
        assert response.status_code == 200
        chat = demo.chats[program.cookies["agentdb_demo"]]
        response = await program.post("/demo/session")
        assert response.headers["hx-redirect"] == "/demo/"
    assert chat.key not in demo.chats


async def test_the_sign_in_cookie_is_httponly_strict_and_not_the_token(
    app: object, demo: Demo
) -> None:
    for base_url, secure in (("http://demo", False), ("https://demo", True)):
        async with client(app, base_url) as browser:
            browser.headers["Origin"] = base_url
            response = await browser.post("/demo/sign-in", data={"token": ADMIN_TOKEN})
            assert response.status_code == 303
            (set_cookie,) = response.headers.get_list("set-cookie")
            attributes = [a.strip().lower() for a in set_cookie.split(";")]
            name, _, value = set_cookie.split(";")[0].partition("=")
            assert name == SIGN_IN_COOKIE
            assert ADMIN_TOKEN not in set_cookie
            assert len(value) >= 40
            assert "httponly" in attributes
            assert "samesite=strict" in attributes
            assert "path=/demo" in attributes
            assert ("secure" in attributes) is secure
            # The chat's cookie alike.
            page = await browser.get("/demo/")
            (chat_cookie,) = page.headers.get_list("set-cookie")
            assert chat_cookie.startswith("agentdb_demo=")
            assert "samesite=strict" in chat_cookie.lower()
            assert "httponly" in chat_cookie.lower()
            # Signing out ends the sign-in and the chat's session.
            chat = demo.chats[browser.cookies["agentdb_demo"]]
            response = await browser.post("/demo/sign-out")
            assert response.headers["hx-redirect"] == "/demo/sign-in"
            assert chat.key not in demo.chats
            browser.cookies.set(SIGN_IN_COOKIE, value)  # replaying the old cookie
            assert (await browser.get("/demo/panels")).status_code == 401


async def test_a_revoked_token_ends_its_sign_in(app: object, demo: Demo, runtime: Runtime) -> None:
    user_token = await runtime.tokens.issue_user_token(demo.user_id, name="a person")
    async with client(app) as browser:
        await sign_in(browser, user_token.token.get_secret_value())
        assert (await browser.get("/demo/")).status_code == 200
        await runtime.tokens.revoke(user_token.view.id)
        response = await browser.get("/demo/", headers={"Accept": "text/html"})
        assert response.headers["location"] == "/demo/sign-in"
        chat = demo.chats.get(browser.cookies["agentdb_demo"])
    if chat is not None:
        demo.drop_chat(chat)


async def test_requests_from_another_site_are_refused(app: object, demo: Demo) -> None:
    async with client(app) as browser:
        await sign_in(browser)
        assert (await browser.get("/demo/")).status_code == 200
        chat = demo.chats[browser.cookies["agentdb_demo"]]
        del browser.headers["Origin"]  # each request below says where it comes from
        forged: list[dict[str, str]] = [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://demo.evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {},  # neither header: not provably from the page
        ]
        for headers in forged:
            response = await browser.post(
                "/demo/chat", data={"message": "sql drop schema public cascade"}, headers=headers
            )
            assert response.status_code == 403, (headers, response.text)
            assert "demo's own page" in response.json()["detail"]
        assert chat.turns == []
        # A browser that sends no Origin but says same-origin is the page itself.
        response = await browser.post(
            "/demo/chat", data={"message": "help"}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert response.status_code == 200
        assert len(chat.turns) == 1
        # Signing in from another site's form is refused too.
        response = await browser.post(
            "/demo/sign-in", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://evil.example"}
        )
        assert response.status_code == 403
    demo.drop_chat(chat)


async def test_failed_sign_ins_are_throttled(app: object, demo: Demo) -> None:
    async with client(app, client=("203.0.113.7", 4000)) as guesser:
        guesser.headers["Origin"] = "http://demo"
        for _ in range(MAX_FAILURES):
            response = await guesser.post("/demo/sign-in", data={"token": "adb_admin_guess"})
            assert response.status_code == 401
        response = await guesser.post("/demo/sign-in", data={"token": ADMIN_TOKEN})
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert SIGN_IN_COOKIE not in guesser.cookies
        # Guessing through the bearer header is held up alike.
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await guesser.get("/demo/panels", headers=bearer)).status_code == 429
    # Another address is not held up by this one's failures.
    async with client(app) as person:
        await sign_in(person)


@pytest_asyncio.fixture(loop_scope="session")
async def capped(runtime: Runtime, api_app: Litestar) -> AsyncIterator[Demo]:
    async with open_demo(runtime, api_app, agent=OfflineAgent(), max_chats=2) as running:
        yield running


async def test_past_the_cap_a_browser_is_told_and_no_session_is_made(
    capped: Demo, api_app: Litestar
) -> None:
    app = with_demo(api_app, create_demo_app(capped))
    # Every demo acts as the same agentdb user: count what this one adds.
    before = await live_sessions(capped)
    async with client(app) as first, client(app) as second, client(app) as third:
        for browser in (first, second, third):
            await sign_in(browser)
        assert (await first.get("/demo/")).status_code == 200
        assert (await second.get("/demo/")).status_code == 200
        refused = await third.get("/demo/")
        assert refused.status_code == 429
        assert "AGENTDB_DEMO_MAX_SESSIONS" in refused.text
        assert "sessions open, its cap" in refused.text
        assert "agentdb_demo" not in third.cookies
        assert len(capped.chats) == 2
        assert len(await live_sessions(capped) - before) == 2
        # "New session" in an open chat replaces its session: the count stays at the cap.
        old = first.cookies["agentdb_demo"]
        response = await first.post("/demo/session")
        assert response.headers["hx-redirect"] == "/demo/"
        assert first.cookies["agentdb_demo"] != old
        assert len(capped.chats) == 2
        # A chat idle long enough gives its place.
        capped.chats[second.cookies["agentdb_demo"]].used_at -= CHAT_IDLE + timedelta(seconds=1)
        assert (await third.get("/demo/")).status_code == 200
        assert second.cookies["agentdb_demo"] not in capped.chats
        assert len(capped.chats) == 2
    with pytest.raises(SessionCapReached):
        await capped.new_chat()


async def test_the_cap_is_the_setting(demo: Demo, runtime: Runtime) -> None:
    assert runtime.settings.demo_max_sessions == Settings.model_fields["demo_max_sessions"].default
    assert demo.max_chats == runtime.settings.demo_max_sessions == 5


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_may_serve_the_demo(host: str) -> None:
    assert listen_refusal(host, Settings()) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10"])  # noqa: S104
def test_other_addresses_need_a_configured_admin_token(host: str) -> None:
    refusal = listen_refusal(host, Settings(admin_token=None))
    assert refusal is not None
    assert "AGENTDB_ADMIN_TOKEN" in refusal
    assert "\n" not in refusal
    configured = Settings(admin_token=SecretStr(ADMIN_TOKEN))
    assert listen_refusal(host, configured) is None
