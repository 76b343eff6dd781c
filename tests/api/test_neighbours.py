"""Noisy neighbours: one user's sessions, driven with session tokens only, run a connection
flood, cancel-swallowing loops, a huge result and a disk writer at once; another user's SQL and
checkpoints keep working throughout, agentdb's memory stays within a bound, and afterwards no
attacker backend outlives its timeout by more than 5 s. (A scaled-down run for a busy CI box:
benchmarks/neighbours.py measures the latencies, the quota overshoot and agentdb's memory at
full size.)"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
from support import physical_names

from agentdb.pg import ServerInfo

from .conftest import Tenant, bearer, make_tenant, runtime_with

MIB = 2**20
QUOTA = 48 * MIB
TIERS_TOML = f"""
[tiers.small]
logical_size_bytes = {QUOTA}
max_sessions_per_user = 10
"""
ORPHAN = (
    "do $$ declare x bigint; begin loop begin select count(*) into x from "
    "generate_series(1, 3000000); exception when query_canceled then null; end; end loop; end $$"
)
ATTACK_S = 8.0
# What agentdb's memory may grow by under the attack (its results are read 8 rows at a time).
RSS_BOUND = 256 * MIB
# The attacker's longest timeout (the flood's) is 3 s; the statement timeout of the runtime 5 s.
LONGEST_TIMEOUT_S = 5.0


runtime = runtime_with(
    "neighbours", tiers_toml=TIERS_TOML, sql_statement_timeout_s=LONGEST_TIMEOUT_S
)


def _rss_bytes() -> int:
    resident_pages = Path("/proc/self/statm").read_text().split()[1]
    return int(resident_pages) * os.sysconf("SC_PAGE_SIZE")


async def _sample_rss(until: float, peak: list[int]) -> None:
    """Keeps the process's largest resident size in `peak[0]` until `until` (monotonic)."""
    while time.monotonic() < until:
        peak[0] = max(peak[0], _rss_bytes())
        await asyncio.sleep(0.02)


async def _second_session(http: httpx.AsyncClient, owner: Tenant) -> tuple[str, dict[str, str]]:
    made = await http.post("/v1/sessions", json={"name": "more"}, headers=owner.user_token)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    token = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=owner.user_token)
    return sid, bearer(token.json()["token"])


async def _role(http: httpx.AsyncClient, owner: Tenant, sid: str) -> str:
    uri = (await http.get(f"/v1/sessions/{sid}", headers=owner.user_token)).json()["connection_uri"]
    role, _ = await physical_names(uri)
    return role


async def test_one_users_attack_leaves_another_users_session_working(
    http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    victim = await make_tenant(http, "victim")
    attacker = await make_tenant(http, "attacker")
    writer_sid, writer_token = await _second_session(http, attacker)
    roles = [await _role(http, attacker, s) for s in (attacker.session_id, writer_sid)]

    async def victim_sql(statement: str) -> httpx.Response:
        return await http.post(
            f"/v1/sessions/{victim.session_id}/sql",
            json={"sql": statement},
            headers=victim.session_token,
        )

    made = await victim_sql("create table t (n int); insert into t select generate_series(1, 100)")
    assert made.status_code == 200, made.text

    deadline = time.monotonic() + ATTACK_S
    answers: Counter[str] = Counter()

    async def attack(kind: str, call: Callable[[], Awaitable[httpx.Response]]) -> None:
        while time.monotonic() < deadline:
            resp = await call()
            answers[f"{kind} {resp.status_code}"] += 1
            if resp.status_code == 429:
                await asyncio.sleep(float(resp.headers["Retry-After"]))

    def attacker_sql(statement: str, **extra: float) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: http.post(
            f"/v1/sessions/{attacker.session_id}/sql",
            json={"sql": statement, **extra},
            headers=attacker.session_token,
        )

    async def disk_writer() -> httpx.Response:
        return await http.post(
            f"/v1/sessions/{writer_sid}/sql",
            json={
                "sql": "create table junk (n int, s text); insert into junk "
                "select g, repeat(md5(g::text), 32) from generate_series(1, 300000) g",
                "timeout_seconds": 60,
            },
            headers=writer_token,
        )

    victim_answers: list[int] = []

    async def victim_work() -> None:
        while time.monotonic() < deadline:
            victim_answers.append((await victim_sql("select count(*) from t")).status_code)
            checkpoint = await http.post(
                f"/v1/sessions/{victim.session_id}/checkpoints",
                json={"label": "under attack"},
                headers=victim.session_token,
            )
            victim_answers.append(checkpoint.status_code)

    attacks = [
        *(
            attack("flood", attacker_sql("select pg_sleep(3)", timeout_seconds=3))
            for _ in range(20)
        ),
        *(attack("orphan", attacker_sql(ORPHAN, timeout_seconds=1)) for _ in range(2)),
        attack(
            "big",
            attacker_sql("select repeat('x', 1000000) from generate_series(1, 100)", max_rows=1),
        ),
    ]
    baseline, peak = _rss_bytes(), [0]
    written, *_ = await asyncio.gather(
        disk_writer(), victim_work(), _sample_rss(deadline, peak), *attacks
    )
    # agentdb (in this process) held a few chunks of the 100 MB results at a time, not them.
    assert peak[0] - baseline < RSS_BOUND, f"grew by {(peak[0] - baseline) >> 20} MiB"

    # The victim never saw a failure; the attacker met the limits.
    assert victim_answers, "the victim ran nothing"
    assert set(victim_answers) <= {200, 201}, victim_answers
    assert answers["flood 429"] > 0, answers
    # The disk writer was stopped at its quota: its session's writes now fail, nothing of the
    # insert was kept, and it wrote far less than the ~300 MiB it asked for.
    assert written.status_code == 403, written.text
    assert written.json()["type"].endswith("quota-exceeded")
    size = await http.post(
        f"/v1/sessions/{writer_sid}/sql",
        json={"sql": "select pg_database_size(current_database())"},
        headers=writer_token,
    )
    assert size.json()["rows"][0][0] < QUOTA + 150 * MIB

    # No attacker backend outlives its timeout by more than 5 s.
    await asyncio.sleep(LONGEST_TIMEOUT_S + 5)
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo()) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s) AND state <> 'idle'",
            (roles,),
        )
        assert await cur.fetchone() == (0,)
