"""The demo's two ways to start, in a subprocess each: `agentdb demo` alone with zero
configuration, and `agentdb serve` with the demo at /demo/ beside the API (whose routes still
need a token). Both ask for a sign-in with the admin token they print on first start. No API
key reaches them, so the offline agent answers. Beyond loopback, neither serves the demo
without AGENTDB_ADMIN_TOKEN."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from support import API_LINE, agentdb, assert_one_line_error, clean_env, serving

DEMO_LINE = re.compile(r"^agentdb demo: (http://127\.0\.0\.1:\d+)/demo/$")
MODEL_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def offline_env() -> dict[str, str]:
    return {k: v for k, v in clean_env().items() if k not in MODEL_KEYS}


def admin_token(printed: list[str]) -> str:
    (line,) = [line for line in printed if line.startswith("agentdb admin token")]
    return line.rsplit(" ", 1)[1]


def sign_in(http: httpx.Client, token: str) -> None:
    """Not signed in, the page sends the browser to sign in; the admin token opens it."""
    opened = http.get("/demo/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/demo/sign-in"
    http.headers["Origin"] = str(http.base_url).rstrip("/")
    signed_in = http.post("/demo/sign-in", data={"token": token}, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text


def chat_once(http: httpx.Client, message: str) -> str:
    """Opens the page (which starts a chat), sends `message` and reads the answer's stream."""
    page = http.get("/demo/")
    assert page.status_code == 200, page.text
    assert "offline command agent" in page.text
    sent = http.post("/demo/chat", data={"message": message})
    assert sent.status_code == 200, sent.text
    assert 'sse-connect="/demo/turns/1/events"' in sent.text
    with http.stream("GET", "/demo/turns/1/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        return "".join(stream.iter_text())


def test_agentdb_demo_runs_alone_with_one_command(tmp_path: Path) -> None:
    printed: list[str] = []
    with (
        serving(offline_env(), tmp_path / "data", ("demo",), DEMO_LINE, printed) as url,
        httpx.Client(base_url=url, timeout=60, follow_redirects=False) as http,
    ):
        assert http.get("/").headers["location"] == "/demo/"
        assert http.get("/demo/static/htmx.min.js").status_code == 200
        assert http.post("/demo/chat", data={"message": "sql select 1"}).status_code == 401
        sign_in(http, admin_token(printed))
        stream = chat_once(http, "create table notes with body text")
        assert "CREATE TABLE" in stream
        assert "checkpoint saved" in stream
        assert stream.rstrip().endswith("data: end")
        # The API app is only reached in-process: nothing of it is served.
        assert http.get("/v1/users").status_code == 404


def test_agentdb_serve_serves_the_demo_beside_the_api(tmp_path: Path) -> None:
    printed: list[str] = []
    with (
        serving(offline_env(), tmp_path / "data", ("serve",), API_LINE, printed) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        sign_in(http, admin_token(printed))
        stream = chat_once(http, "sql select 40 + 2 as answer")
        assert "42" in stream
        assert "checkpoint saved" not in stream  # a read changes nothing
        assert http.get("/v1/users").status_code == 401  # the API still wants a token
        assert http.get("/healthz").status_code == 200


def test_beyond_loopback_the_demo_needs_a_configured_admin_token(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    env = offline_env()
    refused = agentdb("demo", "--host", "0.0.0.0", "--port", "0", "--data-dir", data, env=env)  # noqa: S104
    line = assert_one_line_error(refused)
    assert "not a loopback address" in line
    assert "AGENTDB_ADMIN_TOKEN" in line
    # `agentdb serve` asked for the demo there refuses too (before starting anything).
    asked = {**env, "AGENTDB_DEMO": "true"}
    refused = agentdb("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", data, env=asked)  # noqa: S104
    line = assert_one_line_error(refused)
    assert "AGENTDB_ADMIN_TOKEN" in line
    assert "AGENTDB_DEMO" in line
    assert not (tmp_path / "data" / "pg").exists()


def test_beyond_loopback_agentdb_serve_serves_the_api_without_the_demo(tmp_path: Path) -> None:
    """AGENTDB_DEMO unset: the API still serves on every interface, the demo is left out."""
    printed: list[str] = []
    everywhere = re.compile(r"^agentdb API: http://0\.0\.0\.0:(\d+)/v1 ")
    command = ("serve", "--host", "0.0.0.0")  # noqa: S104
    with (
        serving(offline_env(), tmp_path / "data", command, everywhere, printed) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
    ):
        assert http.get("/healthz").status_code == 200
        # /demo/ is the API's path now: no sign-in page, nothing served without a token.
        response = http.get("/demo/", headers={"Accept": "text/html"})
        assert response.status_code in {401, 404}
        assert "sign-in" not in response.headers.get("location", "")
    (note,) = [line for line in printed if "chat demo" in line]
    assert "AGENTDB_ADMIN_TOKEN" in note
    assert note.endswith("serving the API without it")
