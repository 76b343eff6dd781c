"""The demo's two ways to start, in a subprocess each: `agentdb demo` alone with zero
configuration, and `agentdb serve` with the demo at /demo/ beside the API (whose routes still
need a token). No API key reaches them, so the offline agent answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from support import API_LINE, clean_env, serving

DEMO_LINE = re.compile(r"^agentdb demo: (http://127\.0\.0\.1:\d+)/demo/$")
MODEL_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def offline_env() -> dict[str, str]:
    return {k: v for k, v in clean_env().items() if k not in MODEL_KEYS}


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
    with serving(offline_env(), tmp_path / "data", ("demo",), DEMO_LINE, printed) as url:
        assert any(line.startswith("agentdb admin token") for line in printed)
        with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as http:
            assert http.get("/").headers["location"] == "/demo/"
            assert http.get("/demo/static/htmx.min.js").status_code == 200
            stream = chat_once(http, "create table notes with body text")
            assert "CREATE TABLE" in stream
            assert "checkpoint saved" in stream
            assert stream.rstrip().endswith("data: end")
            # The API app is only reached in-process: nothing of it is served.
            assert http.get("/v1/users").status_code == 404


def test_agentdb_serve_serves_the_demo_beside_the_api(tmp_path: Path) -> None:
    with (
        serving(offline_env(), tmp_path / "data", ("serve",), API_LINE, []) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        stream = chat_once(http, "sql select 40 + 2 as answer")
        assert "42" in stream
        assert "checkpoint saved" not in stream  # a read changes nothing
        assert http.get("/v1/users").status_code == 401  # the API still wants a token
        assert http.get("/healthz").status_code == 200
