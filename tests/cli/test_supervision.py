"""`agentdb serve` supervises the embedded PostgreSQL it started: after `kill -9` of the
postmaster, `/healthz` answers 503 naming the cause within 5 s, the server is restarted on the
same port, and the API (and the sessions' connection strings) work again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psycopg
from support import API_LINE, clean_env, serving

ADMIN = "adb_admin_" + "supervised-test-token-0123456789"


def wait_for(check, seconds: float) -> float:
    """Polls `check` until it holds; returns how long that took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_killed_postgres_is_reported_and_restarted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # With the default warm pool: its fill is under way when PostgreSQL dies.
    env = clean_env(AGENTDB_ADMIN_TOKEN=ADMIN, AGENTDB_WARM_POOL_SIZE="2")
    with serving(env, data_dir, ("serve",), API_LINE, []) as url:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            healthy = http.get("/healthz")
            assert healthy.status_code == 200, healthy.text
            assert healthy.json()["database"] is None
            user = http.post("/v1/users", json={"email": "crash@example.com"}).json()
            session = http.post("/v1/sessions", json={"user_id": user["id"]}).json()
            sid = session["id"]
            wrote = http.post(f"/v1/sessions/{sid}/sql", json={"sql": "create table t (x int)"})
            assert wrote.status_code == 200, wrote.text

            pid_file = data_dir / "pg" / "cluster" / "postmaster.pid"
            postmaster = int(pid_file.read_text().splitlines()[0])
            os.kill(postmaster, signal.SIGKILL)

            seen: list[httpx.Response] = []

            def reported() -> bool:
                seen.append(http.get("/healthz"))
                ready = http.get("/readyz")
                if ready.status_code == 503:  # readiness says so too, naming what failed
                    body = ready.json()
                    assert body["status"] == "not_ready"
                    assert body["checks"]["postgres"] or body["checks"]["meta_database"]
                return seen[-1].status_code == 503

            # The supervisor may restart it before a probe sees it down; either way the
            # answer within 5 s is honest.
            try:
                wait_for(reported, 5)
                down = seen[-1].json()
                assert down["status"] == "down"
                assert down["database"]
                assert "password" not in down["database"]
            except AssertionError:
                assert any(r.status_code == 200 for r in seen)
            wait_for(lambda: http.get("/healthz").status_code == 200, 60)
            wait_for(lambda: http.get("/readyz").status_code == 200, 60)

            assert int(pid_file.read_text().splitlines()[0]) != postmaster
            again = http.post(
                f"/v1/sessions/{sid}/sql", json={"sql": "insert into t values (1) returning x"}
            )
            assert again.status_code == 200, again.text
            assert again.json()["rows"] == [[1]]
            uri = http.get(f"/v1/sessions/{sid}").json()["connection_uri"]
            with psycopg.connect(uri, connect_timeout=10) as conn:
                assert conn.execute("select count(*) from t").fetchone() == (1,)
