"""The REST API in-process over real parts: the session's embedded PostgreSQL, a fresh meta
database per test module, the shared local plane (spec-checked), and httpx through ASGI."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from opentelemetry.trace import TracerProvider
from psycopg import sql
from pydantic import SecretStr

from agentdb.api import create_app
from agentdb.neon import NeonClient, RetryPolicy
from agentdb.pg import ServerInfo
from agentdb.runtime import LOCAL_PLANE_REQUESTS_PER_MIN, Runtime, open_runtime
from agentdb.settings import Settings

ADMIN_TOKEN = "adb_admin_test_" + "x" * 40
FAST_RETRY = RetryPolicy(
    attempts=40, timeout=60, wait_initial=0.001, wait_max=0.01, wait_jitter=0.002
)


@asynccontextmanager
async def open_test_runtime(
    pg_server: ServerInfo,
    localplane_app: Litestar,
    neon_spec: NeonSpec,
    data_dir: Path,
    *,
    tiers_toml: str | None = None,
    unlimited_client: bool = False,
    tracer_provider: TracerProvider | None = None,
    **settings: Any,
) -> AsyncIterator[Runtime]:
    """agentdb's runtime over the suite's local plane, with a meta database of its own (dropped
    afterwards) and, given `tiers_toml`, a tiers file. `unlimited_client` drops Neon's 700
    requests a minute, which hundreds of sessions polling their operations would queue behind
    (only the real Neon needs it, and `agentdb serve` drops it for the local plane too)."""
    tag = secrets.token_hex(4)
    if tiers_toml is not None:
        tiers_file = data_dir / "tiers.toml"
        tiers_file.write_text(tiers_toml)
        settings["tiers_file"] = tiers_file
    config = Settings(
        data_dir=data_dir,
        admin_token=SecretStr(ADMIN_TOKEN),
        meta_database=f"api_meta_{tag}",
        project_prefix=f"api-{tag}-",
        **settings,
    )
    limits: dict[str, Any] = (
        {"rate_limit_per_min": LOCAL_PLANE_REQUESTS_PER_MIN, "burst_per_s": None}
        if unlimited_client
        else {}
    )
    hooks = {"request": [neon_spec.request_hook()], "response": [neon_spec.response_hook()]}
    async with (
        NeonClient.for_app(
            localplane_app,
            api_key="api-tests",
            retry=FAST_RETRY,
            event_hooks=hooks,
            tracer_provider=tracer_provider,
            **limits,
        ) as neon,
        open_runtime(
            config, server=pg_server, neon=neon, tracer_provider=tracer_provider
        ) as running,
    ):
        yield running
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(config.meta_database))
        )


def runtime_with(
    name: str,
    *,
    before_close: Callable[[Runtime], Awaitable[None]] | None = None,
    **options: Any,
) -> Any:
    """A module's `runtime` fixture: the suite's runtime with `options` (those of
    `open_test_runtime`), in a data dir named `name`; `before_close` runs on it last."""

    @pytest_asyncio.fixture(scope="module", loop_scope="session", name="runtime")
    async def runtime(
        pg_server: ServerInfo,
        localplane_app: Litestar,
        neon_spec: NeonSpec,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> AsyncIterator[Runtime]:
        data_dir = tmp_path_factory.mktemp(name)
        async with open_test_runtime(
            pg_server, localplane_app, neon_spec, data_dir, **options
        ) as running:
            yield running
            if before_close is not None:
                await before_close(running)

    return runtime


runtime = runtime_with("api", sql_statement_timeout_s=5)


@pytest.fixture(scope="module")
def api_app(runtime: Runtime) -> Litestar:
    return create_app(runtime)


@pytest_asyncio.fixture(loop_scope="session")
async def http(api_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api_app), base_url="http://agentdb", timeout=60
    ) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


@dataclass
class Tenant:
    """A user with a user token, one ready session and a session token for it."""

    user_id: str
    user_token: dict[str, str]
    session_id: str
    session_token: dict[str, str]
    session: dict[str, Any]


async def make_tenant(http: httpx.AsyncClient, name: str = "ada") -> Tenant:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    user = (await http.post("/v1/users", json={"email": email}, headers=ADMIN)).json()
    token = await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=ADMIN)
    user_token = bearer(token.json()["token"])
    session = await http.post("/v1/sessions", json={"name": name}, headers=user_token)
    assert session.status_code == 201, session.text
    sid = session.json()["id"]
    agent = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=user_token)
    return Tenant(user["id"], user_token, sid, bearer(agent.json()["token"]), session.json())


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(http: httpx.AsyncClient) -> Tenant:
    return await make_tenant(http)


def assert_problem(
    response: httpx.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    """A problem+json answer with this status (and naming `field`, when given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"]
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert field in fields, body
    return body


SqlRunner = Callable[[str], Awaitable[list[list[Any]]]]


def sql_runner(http: httpx.AsyncClient, session_id: str, headers: dict[str, str]) -> SqlRunner:
    async def run(statement: str) -> list[list[Any]]:
        response = await http.post(
            f"/v1/sessions/{session_id}/sql", json={"sql": statement}, headers=headers
        )
        assert response.status_code == 200, response.text
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    return run


_ = Path
