"""A fleet migration survives `agentdb serve` being SIGKILLed in the middle of a wave: the
restarted server resumes it from its rows to the same final state, and no session's database
is migrated twice (its `up` appends a row, so a second run would show)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import clean_env, serving

from .test_crash import ADMIN, PLANE_KEY, agentdb_serve, stop_orphaned_postgres

__all__ = ["stop_orphaned_postgres"]

SESSIONS = 8


def _sql(http: httpx.Client, sid: str, statement: str) -> list[list[Any]]:
    answer = http.post(f"/v1/sessions/{sid}/sql", json={"sql": statement})
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


def _view(http: httpx.Client, migration_id: str) -> dict[str, Any]:
    answer = http.get(f"/v1/migrations/{migration_id}")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


@pytest.mark.usefixtures("stop_orphaned_postgres")
def test_a_kill_mid_wave_resumes_to_the_same_end_with_no_session_migrated_twice(
    tmp_path: Path,
) -> None:
    plane_env = clean_env(AGENTDB_LOCALPLANE_API_KEY=PLANE_KEY)
    with serving(plane_env, tmp_path / "plane") as plane_url:
        env = clean_env(
            AGENTDB_NEON_API_KEY=PLANE_KEY,
            AGENTDB_NEON_API_URL=plane_url,
            AGENTDB_ADMIN_TOKEN=ADMIN["Authorization"].removeprefix("Bearer "),
        )
        data_dir = tmp_path / "agentdb"
        with (
            agentdb_serve(env, data_dir) as (proc, url),
            httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http,
        ):
            user = http.post("/v1/users", json={"email": "fleet-crash@example.com"}).json()
            ids = []
            for _ in range(SESSIONS):
                made = http.post("/v1/sessions", json={"user_id": user["id"]})
                assert made.status_code == 201, made.text
                ids.append(made.json()["id"])
                _sql(http, ids[-1], "create table runs (n int); create table items (id int)")
            made = http.post(
                "/v1/migrations",
                json={
                    "name": "append-a-run",
                    # A second application would leave two rows in `runs`.
                    "up": "insert into runs values (1); alter table items add column k int;"
                    " select pg_sleep(0.4)",
                    "rollout": {"canary": 1, "concurrency": 2, "wave_size": 3},
                },
            )
            assert made.status_code == 201, made.text
            migration_id = made.json()["id"]
            deadline = time.monotonic() + 300
            while _view(http, migration_id)["counts"]["applied"] < SESSIONS // 3:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()

        with (
            agentdb_serve(env, data_dir) as (proc, url),
            httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http,
        ):
            interrupted = _view(http, migration_id)
            assert interrupted["counts"]["applied"] < SESSIONS, interrupted
            deadline = time.monotonic() + 300
            while (view := _view(http, migration_id))["status"] != "finished":
                assert view["status"] in {"canary", "rolling"}, view
                assert time.monotonic() < deadline, view
                time.sleep(0.2)
            assert view["counts"]["applied"] == SESSIONS, view
            rows = http.get(f"/v1/migrations/{migration_id}/sessions").json()["results"]
            assert {row["status"] for row in rows} == {"applied"}
            assert max(row["attempts"] for row in rows) >= 1
            for sid in ids:
                assert _sql(http, sid, "select count(*) from runs") == [[1]], sid
                assert _sql(http, sid, "select name from agentdb.fleet_migrations") == [
                    ["append-a-run"]
                ]
                labels = [
                    c["label"]
                    for c in http.get(f"/v1/sessions/{sid}/checkpoints").json()["checkpoints"]
                ]
                assert "before migration append-a-run" in labels
