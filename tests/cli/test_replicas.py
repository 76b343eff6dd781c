"""Several `agentdb serve` replicas over one meta database and one served control plane behave as
one service: a mixed load of session creates, SQL, checkpoints, restores and branches goes
round-robin across three replicas, one is SIGKILLed in the middle, and afterwards every
acknowledged operation took effect once, every session's data matches a model of what was
acknowledged, the survivors finished what the dead one left, and the job records show no job
ran in two processes at once."""

from __future__ import annotations

import itertools
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg import sql
from support import API_LINE, clean_env, serving

from agentdb.pg import ServerInfo

PLANE_KEY = "replicas-plane-key"
ADMIN = "adb_admin_replicas-test-token-0123456789abcdef"
SESSIONS = 6
STEPS = 9  # per session: an insert each, a checkpoint every third, a restore and a branch
SETTLE_S = 120.0
BUSY_WAIT_S = 90.0  # a dead replica's workflow is taken over after its lease lapses


@dataclass
class Replicas:
    urls: list[str]
    processes: list[subprocess.Popen[str]]
    dead: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    turn: Iterator[int] = field(default_factory=itertools.count)

    def pick(self) -> int:
        """The next live replica, round-robin."""
        with self.lock:
            while True:
                index = next(self.turn) % len(self.urls)
                if index not in self.dead:
                    return index

    def kill(self, index: int) -> None:
        with self.lock:
            self.dead.add(index)
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait()


@dataclass
class Outcome:
    """What the client saw: answers, and calls a dead replica left without one (then retried
    on a live replica with the same Idempotency-Key)."""

    acknowledged: int = 0
    unanswered: int = 0


class Client:
    """One session's agent: every call goes to the next live replica; a call that got no
    answer is sent again, with the same Idempotency-Key, to another."""

    def __init__(self, replicas: Replicas, token: str, outcome: Outcome) -> None:
        self.replicas = replicas
        self.token = token
        self.outcome = outcome

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        key = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": key}
        unanswered = 0
        deadline = time.monotonic() + BUSY_WAIT_S
        while unanswered < 6 and time.monotonic() < deadline:
            index = self.replicas.pick()
            try:
                with httpx.Client(base_url=self.replicas.urls[index], timeout=120) as http:
                    answer = http.post(path, json=body or {}, headers=headers)
            except httpx.TransportError:
                self.outcome.unanswered += 1
                unanswered += 1
                continue
            if answer.status_code == 409 and "in progress" in answer.text:
                time.sleep(0.5)  # the first call still runs (or its replica is being noticed)
                continue
            if answer.status_code == 409 and "/session-busy" in answer.text:
                # A workflow the dead replica left mid-way holds the session until a survivor
                # takes it over; the answer says when to ask again, as a client is told to.
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                continue
            self.outcome.acknowledged += 1
            return answer
        pytest.fail(f"POST {path} got no answer from any replica")

    def get(self, path: str) -> httpx.Response:
        index = self.replicas.pick()
        with httpx.Client(base_url=self.replicas.urls[index], timeout=120) as http:
            return http.get(path, headers={"Authorization": f"Bearer {self.token}"})


@dataclass
class Model:
    """What one session's database holds by the acknowledged calls."""

    rows: list[int] = field(default_factory=list)
    checkpoints: dict[str, list[int]] = field(default_factory=dict)
    branches: list[str] = field(default_factory=list)


def _sql_rows(client: Client, sid: str, statement: str) -> list[list[Any]]:
    answer = client.post(f"/v1/sessions/{sid}/sql", {"sql": statement})
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


def _agent(client: Client, sid: str, model: Model, errors: list[str]) -> None:
    try:
        _sql_rows(client, sid, "CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)")
        for step in range(STEPS):
            inserted = client.post(
                f"/v1/sessions/{sid}/sql", {"sql": f"INSERT INTO t VALUES ({step})"}
            )
            # A retry of an insert the dead replica committed answers 23505: it took effect.
            assert inserted.status_code == 200 or "23505" in inserted.text, inserted.text
            model.rows.append(step)
            if step % 3 == 2:
                made = client.post(f"/v1/sessions/{sid}/checkpoints", {"label": f"s{step}"})
                assert made.status_code == 201, made.text
                model.checkpoints[made.json()["id"]] = list(model.rows)
            if step == 5:
                first = next(iter(model.checkpoints))
                restored = client.post(f"/v1/sessions/{sid}/checkpoints/{first}/restore")
                assert restored.status_code == 200, restored.text
                model.rows = list(model.checkpoints[first])
            if step == 7:
                branch = client.post(f"/v1/sessions/{sid}/branches", {"name": f"dev-{step}"})
                assert branch.status_code == 201, branch.text
                model.branches.append(branch.json()["id"])
    except BaseException as error:  # noqa: BLE001 - reported by the main thread
        errors.append(f"{sid}: {type(error).__name__}: {error}")


@pytest.fixture
def replicas(pg_server: ServerInfo, tmp_path: Path) -> Iterator[tuple[Replicas, str, str, str]]:
    tag = secrets.token_hex(3)
    meta = f"replicas_meta_{tag}"
    plane_dir = tmp_path / "plane"
    with ExitStack() as stack:
        plane = stack.enter_context(
            serving(clean_env(AGENTDB_LOCALPLANE_API_KEY=PLANE_KEY), plane_dir)
        )
        env = clean_env(
            AGENTDB_DATABASE_URL=pg_server.dsn(),
            AGENTDB_META_DATABASE=meta,
            AGENTDB_SECRET_KEY=Fernet.generate_key().decode(),
            AGENTDB_ADMIN_TOKEN=ADMIN,
            AGENTDB_NEON_API_KEY=PLANE_KEY,
            AGENTDB_NEON_API_URL=plane,
            AGENTDB_PROJECT_PREFIX=f"rep-{tag}-",
            AGENTDB_RECONCILE_INTERVAL_S="1",
            AGENTDB_EXPIRY_INTERVAL_S="1",
        )
        processes: list[subprocess.Popen[str]] = []
        urls = [
            stack.enter_context(
                serving(env, tmp_path / f"agentdb-{n}", ("serve",), API_LINE, process=processes)
            )
            for n in range(3)
        ]
        try:
            yield Replicas(urls, processes), plane, f"rep-{tag}-", meta
        finally:
            stack.close()
            with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(meta))
                )
            shutil.rmtree(plane_dir, ignore_errors=True)


def _settled(client: Client, sid: str) -> bool:
    session = client.get(f"/v1/sessions/{sid}").json()
    checkpoints = client.get(f"/v1/sessions/{sid}/checkpoints?limit=100").json()["checkpoints"]
    branches = client.get(f"/v1/sessions/{sid}/branches").json()["branches"]
    return (
        session["status"] == "ready"
        and all(c["status"] != "pending" for c in checkpoints)
        and all(b["status"] not in {"pending", "deleting"} for b in branches)
    )


def test_three_replicas_one_killed_mid_load_act_as_one_service(  # noqa: C901, PLR0915
    replicas: tuple[Replicas, str, str, str], pg_server: ServerInfo
) -> None:
    fleet, plane_url, prefix, meta = replicas
    outcome = Outcome()
    admin = Client(fleet, ADMIN, outcome)
    user = admin.post("/v1/users", {"email": "replicas@example.com"})
    assert user.status_code == 201, user.text
    user_token = admin.post(f"/v1/users/{user.json()['id']}/tokens").json()["token"]
    owner = Client(fleet, user_token, outcome)
    sessions = []
    for n in range(SESSIONS):
        made = owner.post("/v1/sessions", {"name": f"replica load {n}"})
        assert made.status_code == 201, made.text
        sessions.append(made.json()["id"])
    models = {sid: Model() for sid in sessions}
    errors: list[str] = []
    threads = [
        threading.Thread(target=_agent, args=(owner, sid, models[sid], errors)) for sid in sessions
    ]
    for thread in threads:
        thread.start()
    # Mid-load: replica 1 dies with calls in flight.
    deadline = time.monotonic() + 120
    while outcome.acknowledged < SESSIONS * STEPS // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    fleet.kill(1)
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert not [t for t in threads if t.is_alive()]

    # The survivors' reconcilers finish what the dead one left.
    deadline = time.monotonic() + SETTLE_S
    while not all(_settled(owner, sid) for sid in sessions):
        assert time.monotonic() < deadline, "sessions did not settle"
        time.sleep(0.5)
    for sid in sessions:
        model = models[sid]
        rows = _sql_rows(owner, sid, "SELECT k FROM t ORDER BY k")
        assert [row[0] for row in rows] == sorted(model.rows), sid
        listed = owner.get(f"/v1/sessions/{sid}/checkpoints?limit=100").json()["checkpoints"]
        labels = [c["label"] for c in listed if c["label"]]
        # Each acknowledged checkpoint exists once, ready.
        assert len(labels) == len(set(labels)), labels
        ready = {c["id"] for c in listed if c["status"] == "ready"}
        assert set(model.checkpoints) <= ready
        dev = owner.get(f"/v1/sessions/{sid}/branches").json()["branches"]
        assert set(model.branches) <= {b["id"] for b in dev if b["status"] == "ready"}

    # No job ran in two processes at once; the survivors ran the reconciler after the kill.
    with psycopg.connect(pg_server.conninfo(meta)) as conn:
        runs = conn.execute(
            "SELECT job, runner, started_at, finished_at FROM job_runs ORDER BY job, started_at"
        ).fetchall()
    assert {r[0] for r in runs} >= {"reconcile"}
    for job, group in itertools.groupby(runs, key=lambda r: r[0]):
        finished = [r for r in group if r[3] is not None]
        for before, after in itertools.pairwise(finished):
            assert after[2] >= before[3], (job, before, after)
    assert len({r[1] for r in runs if r[0] == "reconcile"}) >= 2

    # Every project on the plane is a live session's, and deletes leave none.
    plane = httpx.Client(
        base_url=plane_url, headers={"Authorization": f"Bearer {PLANE_KEY}"}, timeout=60
    )
    with plane:
        names = {
            p["name"]
            for p in plane.get("/projects?limit=400").json()["projects"]
            if p["name"].startswith(prefix)
        }
        assert names == {f"{prefix}{sid}" for sid in sessions}
        for sid in sessions:
            index = fleet.pick()
            with httpx.Client(base_url=fleet.urls[index], timeout=120) as http:
                deleted = http.delete(
                    f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {user_token}"}
                )
                assert deleted.status_code in {200, 202, 204}, deleted.text
        deadline = time.monotonic() + SETTLE_S
        while [
            p
            for p in plane.get("/projects?limit=400").json()["projects"]
            if p["name"].startswith(prefix)
        ]:
            assert time.monotonic() < deadline, "projects left after the deletes"
            time.sleep(0.5)
    print(f"replicas: {outcome.acknowledged} answered, {outcome.unanswered} cut off by the kill")  # noqa: T201
