"""`AGENTDB_LOG_FORMAT=json`: every line `agentdb serve` writes is one JSON object (the
libraries' lines too), a request's lines carry its request id, token id and session id, and no
line carries a token or a password."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from support import clean_env, serving

from .test_supervision import ADMIN, API_LINE


def test_json_lines_carry_the_requests_ids_and_no_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(AGENTDB_ADMIN_TOKEN=ADMIN, AGENTDB_LOG_FORMAT="json", AGENTDB_LOG_LEVEL="debug")
    with serving(env, data_dir, ("serve",), API_LINE, []) as url:
        headers = {"Authorization": f"Bearer {ADMIN}", "X-Request-Id": "req-json-1"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            user = http.post("/v1/users", json={"email": "json@example.com"}).json()
            session = http.post("/v1/sessions", json={"user_id": user["id"]}).json()
            sid = session["id"]
            password = httpx.URL(session["connection_uri"]).password
            made = http.post(f"/v1/sessions/{sid}/checkpoints", json={"label": "one"})
            assert made.status_code == 201, made.text
    text = data_dir.with_name(data_dir.name + ".stderr").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    assert all(isinstance(line, dict) and "event" in line and "level" in line for line in lines)
    mine = [line for line in lines if line.get("session_id") == sid]
    assert mine, "no line of the checkpoint request names its session"
    assert all(line["request_id"] == "req-json-1" and line["token_id"] for line in mine)
    assert ADMIN not in text
    assert password
    assert password not in text
