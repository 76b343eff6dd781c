"""Per-token rates and per-token and per-user requests in flight: over a limit the answer is 429
with Retry-After naming the limit, other tokens and users go on, and nothing stays counted after
a call ends however it ended."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import psycopg
import pytest
from litestar import Litestar
from pydantic import ValidationError

from agentdb.api import create_app
from agentdb.api._limits import TokenLimits, is_expensive
from agentdb.runtime import Runtime
from agentdb.settings import Settings

from .conftest import ADMIN, Tenant, assert_problem, make_tenant, runtime_with

LOCK = 7140  # the advisory lock the "slow" calls wait on, until the test lets them go
WAIT_FOR_LOCK = f"select pg_advisory_xact_lock({LOCK})"


# The suite's runtime with time for SQL calls that wait for a lock the test holds.
runtime = runtime_with("api-limits", sql_statement_timeout_s=120)


def limited(runtime: Runtime, **limits: str | int) -> Litestar:
    app = create_app(runtime)
    settings = {
        "rate": "",
        "expensive_rate": "",
        "token_max_concurrent": 100,
        "user_max_concurrent": 100,
        **limits,
    }
    app.state.token_limits = TokenLimits(**settings)  # type: ignore[arg-type]
    return app


def client(app: Litestar) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://agentdb", timeout=120
    )


def assert_429(response: httpx.Response, setting: str) -> dict[str, object]:
    body = assert_problem(response, 429)
    assert setting in str(body["detail"]), body
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert body["retry_after"] == retry_after
    return body


def in_flight(app: Litestar) -> tuple[dict[object, int], dict[object, int]]:
    limits: TokenLimits = app.state.token_limits
    return dict(limits.tokens_in_flight), dict(limits.users_in_flight)


async def until_in_flight(app: Litestar, count: int) -> None:
    """Waits until `count` requests are counted in flight (a generous bound: the calls only
    have to get past authentication)."""
    for _ in range(6000):
        if sum(in_flight(app)[0].values()) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {count} requests in flight: {in_flight(app)}")


async def test_a_token_over_its_rate_gets_429_and_other_tokens_go_on(runtime: Runtime):
    app = limited(runtime, rate="4/minute")
    async with client(app) as http:
        ada, bob = await make_tenant(http, "ada"), await make_tenant(http, "bob")
        path = f"/v1/sessions/{ada.session_id}"
        for _ in range(4):
            assert (await http.get(path, headers=ada.session_token)).status_code == 200
        body = assert_429(
            await http.get(path, headers=ada.session_token), "AGENTDB_TOKEN_RATE_LIMIT"
        )
        assert "4 per 1 minute" in str(body["detail"])
        # The limit is the token's, not the address's or the user's: ada's user token (which
        # made two requests in make_tenant), bob's tokens and the admin go on.
        assert (await http.get(path, headers=ada.user_token)).status_code == 200
        bob_path = f"/v1/sessions/{bob.session_id}"
        assert (await http.get(bob_path, headers=bob.session_token)).status_code == 200
        for _ in range(6):
            assert (await http.get(path, headers=ADMIN)).status_code == 200
        # Refused requests are not counted, but the token stays refused within the window.
        assert_429(await http.get(path, headers=ada.session_token), "AGENTDB_TOKEN_RATE_LIMIT")


async def test_control_plane_operations_have_a_stricter_rate(runtime: Runtime):
    app = limited(runtime, rate="100/minute", expensive_rate="1/minute")
    async with client(app) as http:
        ada = await make_tenant(http, "ada")
        checkpoints = f"/v1/sessions/{ada.session_id}/checkpoints"
        first = await http.post(checkpoints, json={"label": "one"}, headers=ada.session_token)
        assert first.status_code == 201, first.text
        assert_429(
            await http.post(checkpoints, json={"label": "two"}, headers=ada.session_token),
            "AGENTDB_TOKEN_EXPENSIVE_RATE_LIMIT",
        )
        # Cheap calls of the same token go on, SQL among them.
        assert (await http.get(checkpoints, headers=ada.session_token)).status_code == 200
        sql = await http.post(
            f"/v1/sessions/{ada.session_id}/sql",
            json={"sql": "select 1"},
            headers=ada.session_token,
        )
        assert sql.status_code == 200, sql.text
    assert is_expensive("POST", "/v1/sessions")
    assert is_expensive("POST", "/v1/sessions/x/checkpoints/y/restore")
    assert is_expensive("POST", "/v1/sessions/x/branches")
    assert not is_expensive("GET", "/v1/sessions/x/checkpoints")
    assert not is_expensive("POST", "/v1/sessions/x/checkpoints/y/pin")


async def test_the_admin_token_has_its_own_rate(runtime: Runtime):
    app = limited(runtime, rate="1/minute", admin_rate="2/minute")
    async with client(app) as http:
        for _ in range(2):
            assert (await http.get("/v1/users?limit=1", headers=ADMIN)).status_code == 200
        assert_429(await http.get("/v1/users?limit=1", headers=ADMIN), "AGENTDB_ADMIN_RATE_LIMIT")


async def test_requests_in_flight_are_limited_per_token_and_per_user(runtime: Runtime):
    app = limited(runtime, token_max_concurrent=2, user_max_concurrent=3)
    async with client(app) as http:
        ada, bob = await make_tenant(http, "ada"), await make_tenant(http, "bob")
        sql = f"/v1/sessions/{ada.session_id}/sql"

        async def slow(headers: dict[str, str]) -> httpx.Response:
            return await http.post(sql, json={"sql": WAIT_FOR_LOCK}, headers=headers)

        async with await psycopg.AsyncConnection.connect(
            ada.session["connection_uri"], autocommit=True
        ) as holder:
            await holder.execute("select pg_advisory_lock(%s)", (LOCK,))
            # Three slow calls of one session token: two are in flight (waiting for the lock),
            # the third is refused while they are.
            calls = [asyncio.create_task(slow(ada.session_token)) for _ in range(3)]
            done, pending = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            (refused,) = done
            assert_429(refused.result(), "AGENTDB_TOKEN_MAX_CONCURRENT")
            assert refused.result().headers["retry-after"] == "1"
            await until_in_flight(app, 2)

            # The user's own token has room for one more (3 for the user), then none.
            third = asyncio.create_task(slow(ada.user_token))
            await until_in_flight(app, 3)
            assert_429(
                await http.get(f"/v1/sessions/{ada.session_id}", headers=ada.user_token),
                "AGENTDB_USER_MAX_CONCURRENT",
            )
            # Another user is not affected.
            other = await http.post(
                f"/v1/sessions/{bob.session_id}/sql",
                json={"sql": "select 1"},
                headers=bob.session_token,
            )
            assert other.status_code == 200, other.text
            assert (await http.get("/v1/users?limit=1", headers=ADMIN)).status_code == 200

            await holder.execute("select pg_advisory_unlock(%s)", (LOCK,))
            for answer in await asyncio.gather(*pending, third):
                assert answer.status_code == 200, answer.text
        assert in_flight(app) == ({}, {})
        # With the calls done, the token has its room back.
        again = await http.post(sql, json={"sql": "select 1"}, headers=ada.session_token)
        assert again.status_code == 200, again.text


async def test_nothing_stays_counted_after_errors_or_a_client_that_goes_away(runtime: Runtime):
    app = limited(runtime, token_max_concurrent=1, user_max_concurrent=1)
    async with client(app) as http:
        ada = await make_tenant(http, "ada")
        sql = f"/v1/sessions/{ada.session_id}/sql"
        for _ in range(3):
            failed = await http.post(sql, json={"sql": "select 1/0"}, headers=ada.session_token)
            assert_problem(failed, 422)
            bad = await http.post(sql, json={"sql": 1}, headers=ada.session_token)
            assert_problem(bad, 400, "sql")
            missing = await http.get("/v1/sessions/not-an-id", headers=ada.session_token)
            assert missing.status_code in {400, 404}
            assert in_flight(app) == ({}, {})

        async with await psycopg.AsyncConnection.connect(
            ada.session["connection_uri"], autocommit=True
        ) as holder:
            await holder.execute("select pg_advisory_lock(%s)", (LOCK,))
            call = asyncio.create_task(
                http.post(sql, json={"sql": WAIT_FOR_LOCK}, headers=ada.session_token)
            )
            await until_in_flight(app, 1)
            call.cancel()  # the client goes away mid-call
            with pytest.raises(asyncio.CancelledError):
                await call
            assert in_flight(app) == ({}, {})
            await holder.execute("select pg_advisory_unlock(%s)", (LOCK,))
        ok = await http.post(sql, json={"sql": "select 1"}, headers=ada.session_token)
        assert ok.status_code == 200, ok.text
        assert in_flight(app) == ({}, {})


async def test_the_default_limits_come_from_the_settings(runtime: Runtime, http: httpx.AsyncClient):
    limits = TokenLimits.from_settings(runtime.settings)
    assert [str(item) for item in limits.rate] == ["600 per 1 minute"]
    assert [str(item) for item in limits.expensive_rate] == ["120 per 1 minute"]
    assert limits.admin_rate == []
    assert (limits.token_max_concurrent, limits.user_max_concurrent) == (8, 32)
    # The suite's app has them, and a session's calls within them pass.
    tenant: Tenant = await make_tenant(http, "dee")
    answers = await asyncio.gather(
        *(
            http.get(f"/v1/sessions/{tenant.session_id}", headers=tenant.session_token)
            for _ in range(8)
        )
    )
    assert {a.status_code for a in answers} == {200}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("token_rate_limit", "lots"),
        ("token_expensive_rate_limit", "10 per fortnight"),
        ("admin_rate_limit", "0/minute"),
        ("token_max_concurrent", 0),
        ("user_max_concurrent", "many"),
    ],
)
def test_bad_limits_are_refused_naming_the_setting(name: str, value: object):
    with pytest.raises(ValidationError) as raised:
        Settings(**{name: value})  # type: ignore[arg-type]
    assert raised.value.errors()[0]["loc"] == (name,)


def test_serve_refuses_a_bad_limit_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "AGENTDB_TOKEN_RATE_LIMIT": "lots"}
    result = subprocess.run(
        [sys.executable, "-c", "from agentdb.cli import main; main()", "serve", "--port", "0"],
        env={**env, "AGENTDB_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AGENTDB_TOKEN_RATE_LIMIT" in lines[0]


async def test_the_openapi_document_declares_429_on_every_v1_operation(http: httpx.AsyncClient):
    schema = (await http.get("/schema/openapi.json")).json()
    operations = [
        (path, op)
        for path, item in schema["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert operations
    for path, op in operations:
        assert "429" in op["responses"], path
        assert "in flight" in op["responses"]["429"]["description"], path
