"""Crash recovery: `agentdb serve` is killed (SIGKILL) in the middle of a checkpoint and of a
restore, then started again. The reconciler settles what was interrupted: no pending rows, no
orphan project on the control plane, and the data intact and consistent with the head.

agentdb runs in cloud mode against a separately served local plane, so the control plane keeps
going while agentdb dies (as Neon would), and its operations are slowed down to make the window
wide enough to kill in."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support import AGENTDB, API_LINE, RUN_TIMEOUT, clean_env, serving

ADMIN = {"Authorization": "Bearer adb_admin_crash-test-token-0123456789"}
PLANE_KEY = "crash-test-plane-key"


@contextmanager
def agentdb_serve(
    env: dict[str, str], data_dir: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(  # noqa: S603
        [str(AGENTDB), "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line is None:
                pytest.fail(f"agentdb serve exited with {proc.wait()}")
            if match := API_LINE.match(line):
                break
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def kill_during(proc: subprocess.Popen[str], url: str, method: str, path: str, body: Any) -> None:
    """Sends the request, and SIGKILLs the server while it is being handled."""
    outcome: list[object] = []

    def call() -> None:
        try:
            with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http:
                outcome.append(http.request(method, path, json=body))
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.6)  # the call is waiting on slowed-down control-plane operations
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    caller.join(timeout=60)
    assert outcome, "the request never ended"
    assert isinstance(outcome[0], httpx.HTTPError), f"it finished before the kill: {outcome}"


def projects_on(plane_url: str) -> set[str]:
    with httpx.Client(
        base_url=plane_url, headers={"Authorization": f"Bearer {PLANE_KEY}"}, timeout=60
    ) as neon:
        return {p["name"] for p in neon.get("/projects").json()["projects"]}


def settled(http: httpx.Client, sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    session = http.get(f"/v1/sessions/{sid}").json()
    checkpoints = http.get(f"/v1/sessions/{sid}/checkpoints").json()["checkpoints"]
    return session, checkpoints


def rows(http: httpx.Client, sid: str) -> list[list[Any]]:
    answer = http.post(f"/v1/sessions/{sid}/sql", json={"sql": "SELECT n FROM t ORDER BY n"})
    assert answer.status_code == 200, answer.text
    result: list[list[Any]] = answer.json()["rows"]
    return result


@pytest.fixture
def stop_orphaned_postgres(tmp_path: Path) -> Iterator[None]:
    """A killed agentdb leaves its PostgreSQL running; the restarted one attaches to it and, not
    having started it, leaves it running at exit. Stop it once the test is done."""
    yield
    for pidfile in tmp_path.glob("*/pg/cluster/postmaster.pid"):
        try:
            postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
            postmaster.terminate()
            postmaster.wait(timeout=30)
        except (OSError, ValueError, IndexError, psutil.Error):
            continue


@pytest.mark.usefixtures("stop_orphaned_postgres")
def test_killed_mid_checkpoint_and_mid_restore_recovers(tmp_path: Path) -> None:
    plane_env = clean_env(
        AGENTDB_LOCALPLANE_API_KEY=PLANE_KEY, AGENTDB_LOCALPLANE_OPERATION_DELAY_MS="1500"
    )
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
            user = http.post("/v1/users", json={"email": "crash@example.com"}).json()
            sid = http.post("/v1/sessions", json={"user_id": user["id"]}).json()["id"]
            assert (
                http.post(
                    f"/v1/sessions/{sid}/sql",
                    json={"sql": "CREATE TABLE t (n int); INSERT INTO t VALUES (1)"},
                ).status_code
                == 200
            )
            first = http.post(f"/v1/sessions/{sid}/checkpoints", json={"label": "one"}).json()
            http.post(f"/v1/sessions/{sid}/sql", json={"sql": "INSERT INTO t VALUES (2)"})
            kill_during(proc, url, "POST", f"/v1/sessions/{sid}/checkpoints", {"label": "two"})

        with (
            agentdb_serve(env, data_dir) as (proc, url),
            httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http,
        ):
            session, checkpoints = settled(http, sid)
            assert session["status"] == "ready", session
            assert {c["status"] for c in checkpoints} <= {"ready", "failed"}, checkpoints
            assert rows(http, sid) == [[1], [2]]  # a checkpoint never changes the data
            two = [c for c in checkpoints if c["label"] == "two"]
            if two[0]["status"] == "ready":
                assert session["head_checkpoint_id"] == two[0]["id"]
            else:
                assert session["head_checkpoint_id"] == first["id"]
            assert projects_on(plane_url) == {f"agentdb-{sid}"}

            kill_during(
                proc, url, "POST", f"/v1/sessions/{sid}/checkpoints/{first['id']}/restore", None
            )

        with (
            agentdb_serve(env, data_dir) as (proc, url),
            httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http,
        ):
            session, checkpoints = settled(http, sid)
            assert session["status"] == "ready", session
            assert {c["status"] for c in checkpoints} <= {"ready", "failed"}, checkpoints
            # Either the restore happened (head = "one", one row) or it did not (two rows).
            expected = [[1]] if session["head_checkpoint_id"] == first["id"] else [[1], [2]]
            assert rows(http, sid) == expected
            assert projects_on(plane_url) == {f"agentdb-{sid}"}
            # And the session works on: a checkpoint and a restore go through.
            again = http.post(f"/v1/sessions/{sid}/checkpoints", json={"label": "after"})
            assert again.status_code == 201, again.text
            back = http.post(f"/v1/sessions/{sid}/checkpoints/{first['id']}/restore")
            assert back.status_code == 200, back.text
            assert rows(http, sid) == [[1]]
            events = http.get(f"/v1/sessions/{sid}/events?limit=500").json()["events"]
            assert any(e["action"].startswith("reconcile.") for e in events), [
                e["action"] for e in events
            ]
