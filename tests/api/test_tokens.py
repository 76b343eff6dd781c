"""Tokens a platform can operate: listed without their secrets, revoked at once and audited,
session tokens expiring by default, and wrong tokens throttled per client address."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from litestar import Litestar

from agentdb.api import create_app
from agentdb.api._auth import AuthThrottle
from agentdb.runtime import Runtime
from meta_schema import ApiToken

from .conftest import ADMIN, ADMIN_TOKEN, Tenant, assert_problem, bearer, make_tenant

SECRET_KEYS = {"token", "token_hash", "hash"}


async def token_id_of(http: httpx.AsyncClient, headers: dict[str, str], owner: str) -> str:
    """The id of the token in `headers`, found among `owner`'s tokens by its prefix."""
    token = headers["Authorization"].removeprefix("Bearer ")
    listed = await http.get(f"/v1/users/{owner}/tokens", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    (found,) = [t for t in listed.json()["tokens"] if token.startswith(t["prefix"])]
    return str(found["id"])


async def test_tokens_are_listed_without_their_secrets(http: httpx.AsyncClient, tenant: Tenant):
    by_admin = await http.get(f"/v1/users/{tenant.user_id}/tokens", headers=ADMIN)
    by_user = await http.get(f"/v1/users/{tenant.user_id}/tokens", headers=tenant.user_token)
    assert by_admin.status_code == by_user.status_code == 200, by_user.text
    assert by_admin.json() == by_user.json()
    tokens = by_user.json()["tokens"]
    assert sorted(t["scope"] for t in tokens) == ["session", "user"]
    assert by_user.json()["next_after"] is None
    for t in tokens:
        assert not SECRET_KEYS & set(t), t
        assert t["user_id"] == tenant.user_id
    text = by_user.text
    for headers in (tenant.user_token, tenant.session_token):
        assert headers["Authorization"].removeprefix("Bearer ") not in text

    of_session = await http.get(
        f"/v1/sessions/{tenant.session_id}/tokens", headers=tenant.user_token
    )
    assert [t["scope"] for t in of_session.json()["tokens"]] == ["session"]
    assert of_session.json()["tokens"][0]["session_id"] == tenant.session_id

    page = await http.get(f"/v1/users/{tenant.user_id}/tokens?limit=1", headers=ADMIN)
    assert len(page.json()["tokens"]) == 1
    rest = await http.get(
        f"/v1/users/{tenant.user_id}/tokens?after={page.json()['next_after']}", headers=ADMIN
    )
    assert [t["id"] for t in page.json()["tokens"] + rest.json()["tokens"]] == [
        t["id"] for t in tokens
    ]


async def test_a_session_token_lists_nothing(http: httpx.AsyncClient, tenant: Tenant):
    for path in (f"/v1/sessions/{tenant.session_id}/tokens",):
        problem = assert_problem(await http.get(path, headers=tenant.session_token), 403)
        assert "user or admin token" in problem["detail"]
    # Its user's tokens are out of its reach altogether.
    assert_problem(
        await http.get(f"/v1/users/{tenant.user_id}/tokens", headers=tenant.session_token), 404
    )


async def test_revoking_takes_effect_at_once_and_is_audited(http: httpx.AsyncClient):
    tenant = await make_tenant(http, "revoked")
    session_token_id = await token_id_of(http, tenant.session_token, tenant.user_id)
    s = f"/v1/sessions/{tenant.session_id}"
    assert (await http.get(s, headers=tenant.session_token)).status_code == 200

    revoked = await http.delete(f"/v1/tokens/{session_token_id}", headers=tenant.user_token)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert not SECRET_KEYS & set(revoked.json())
    assert_problem(await http.get(s, headers=tenant.session_token), 401)

    # Again: the same answer, nothing new written.
    again = await http.delete(f"/v1/tokens/{session_token_id}", headers=tenant.user_token)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    events = (await http.get(f"{s}/events", headers=ADMIN)).json()["events"]
    revocations = [e for e in events if e["action"] == "token.revoke"]
    assert len(revocations) == 1
    assert revocations[0]["target_id"] == session_token_id

    # Listings leave it out unless asked for.
    active = await http.get(f"{s}/tokens", headers=tenant.user_token)
    assert active.json()["tokens"] == []
    everything = await http.get(f"{s}/tokens?include_inactive=true", headers=tenant.user_token)
    assert [t["id"] for t in everything.json()["tokens"]] == [session_token_id]

    # A user may revoke its own user token too; then it is locked out as well.
    user_token_id = await token_id_of(http, tenant.user_token, tenant.user_id)
    own = await http.delete(f"/v1/tokens/{user_token_id}", headers=tenant.user_token)
    assert own.status_code == 200, own.text
    assert_problem(await http.get(s, headers=tenant.user_token), 401)


async def test_a_session_token_may_revoke_itself_and_nothing_else(http: httpx.AsyncClient):
    tenant = await make_tenant(http, "selfrevoke")
    second = await http.post(
        f"/v1/sessions/{tenant.session_id}/tokens", json={}, headers=tenant.user_token
    )
    second_id = second.json()["id"]
    own_id = await token_id_of(http, tenant.session_token, tenant.user_id)
    user_token_id = await token_id_of(http, tenant.user_token, tenant.user_id)
    for other in (second_id, user_token_id):
        assert_problem(await http.get(f"/v1/tokens/{other}", headers=tenant.session_token), 404)
        assert_problem(await http.delete(f"/v1/tokens/{other}", headers=tenant.session_token), 404)
    shown = await http.get(f"/v1/tokens/{own_id}", headers=tenant.session_token)
    assert shown.json()["expires_at"] is not None
    assert (await http.delete(f"/v1/tokens/{own_id}", headers=tenant.session_token)).is_success
    assert_problem(
        await http.get(f"/v1/sessions/{tenant.session_id}", headers=tenant.session_token), 401
    )
    still = await http.get(
        f"/v1/sessions/{tenant.session_id}", headers=bearer(second.json()["token"])
    )
    assert still.status_code == 200


async def test_tokens_of_others_and_admin_tokens_are_out_of_reach(
    http: httpx.AsyncClient, runtime: Runtime
):
    alice, bob = await make_tenant(http, "alice"), await make_tenant(http, "bob")
    bobs = await token_id_of(http, bob.user_token, bob.user_id)
    admin = await runtime.tokens.authenticate(ADMIN_TOKEN)
    assert admin is not None
    for token_id in (bobs, str(admin.token_id), str(uuid.uuid4())):
        assert_problem(await http.get(f"/v1/tokens/{token_id}", headers=alice.user_token), 404)
        assert_problem(await http.delete(f"/v1/tokens/{token_id}", headers=alice.user_token), 404)
    assert_problem(await http.get(f"/v1/users/{bob.user_id}/tokens", headers=alice.user_token), 404)
    # The admin reaches every token but replaces its own through AGENTDB_ADMIN_TOKEN.
    assert (await http.get(f"/v1/tokens/{bobs}", headers=ADMIN)).status_code == 200
    assert_problem(await http.delete(f"/v1/tokens/{admin.token_id}", headers=ADMIN), 409)
    assert (await http.get("/v1/users?limit=1", headers=ADMIN)).status_code == 200
    assert (await http.get(f"/v1/sessions/{bob.session_id}", headers=bob.user_token)).is_success


async def test_session_tokens_expire_by_default_and_user_tokens_on_request(
    http: httpx.AsyncClient, tenant: Tenant, runtime: Runtime
):
    s = f"/v1/sessions/{tenant.session_id}/tokens"
    issued = (await http.post(s, json={}, headers=tenant.user_token)).json()
    created = datetime.fromisoformat(issued["created_at"])
    ttl = timedelta(seconds=runtime.settings.session_token_ttl_s)
    assert datetime.fromisoformat(issued["expires_at"]) == created + ttl
    longest = runtime.settings.session_token_max_ttl_s
    at_most = await http.post(s, json={"ttl_seconds": longest}, headers=tenant.user_token)
    assert at_most.status_code == 201, at_most.text
    too_long = await http.post(s, json={"ttl_seconds": longest + 1}, headers=tenant.user_token)
    assert_problem(too_long, 400, "ttl_seconds")

    user = f"/v1/users/{tenant.user_id}/tokens"
    endless = (await http.post(user, json={}, headers=ADMIN)).json()
    assert endless["expires_at"] is None
    hour = (await http.post(user, json={"ttl_seconds": 3600}, headers=ADMIN)).json()
    assert datetime.fromisoformat(hour["expires_at"]) == datetime.fromisoformat(
        hour["created_at"]
    ) + timedelta(hours=1)


async def test_an_expired_token_answers_401(
    http: httpx.AsyncClient, tenant: Tenant, runtime: Runtime
):
    issued = (
        await http.post(
            f"/v1/sessions/{tenant.session_id}/tokens", json={}, headers=tenant.user_token
        )
    ).json()
    headers = bearer(issued["token"])
    assert (await http.get(f"/v1/sessions/{tenant.session_id}", headers=headers)).is_success
    async with runtime.meta() as db:
        await db.execute(
            sa.update(ApiToken)
            .where(ApiToken.id == uuid.UUID(issued["id"]))  # type: ignore[arg-type]
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await db.commit()
    assert_problem(await http.get(f"/v1/sessions/{tenant.session_id}", headers=headers), 401)


# --- throttling -------------------------------------------------------------------------------


@asynccontextmanager
async def client_at(app: Litestar, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://agentdb", timeout=60
    ) as client:
        yield client


async def test_wrong_tokens_are_throttled_per_address(runtime: Runtime, tenant: Tenant):
    app = create_app(runtime)
    app.state.auth_throttle = AuthThrottle("3/minute")
    wrong = bearer("adb_user_" + "x" * 43)
    path = f"/v1/sessions/{tenant.session_id}"
    async with client_at(app, "10.0.0.1") as attacker, client_at(app, "10.0.0.2") as other:
        # The session token works from the attacker's address before the burst.
        assert (await attacker.get(path, headers=tenant.session_token)).status_code == 200
        for _ in range(3):
            assert_problem(await attacker.get(path, headers=wrong), 401)
        throttled = await attacker.get(path, headers=wrong)
        problem: dict[str, Any] = assert_problem(throttled, 429)
        assert "wrong token" in problem["detail"]
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        assert problem["retry_after"] == int(throttled.headers["retry-after"])
        # A token never seen working is refused from there too, even a good one ...
        assert_problem(await attacker.get(path, headers=tenant.user_token), 429)
        # ... while one that worked recently goes on working.
        assert (await attacker.get(path, headers=tenant.session_token)).status_code == 200
        # Another address is not affected: good and wrong tokens are answered as ever.
        assert (await other.get(path, headers=tenant.user_token)).status_code == 200
        assert_problem(await other.get(path, headers=wrong), 401)


async def test_requests_without_a_token_are_not_counted(runtime: Runtime):
    app = create_app(runtime)
    app.state.auth_throttle = AuthThrottle("2/minute")
    async with client_at(app, "10.0.0.3") as client:
        for _ in range(5):
            assert_problem(await client.get("/v1/sessions"), 401)
        assert (await client.get("/v1/users?limit=1", headers=ADMIN)).status_code == 200


async def test_the_default_limits_come_from_the_settings(api_app: Litestar, runtime: Runtime):
    throttle: AuthThrottle = api_app.state.auth_throttle
    assert [str(item) for item in throttle.limits] == [
        str(item) for item in AuthThrottle(runtime.settings.auth_failure_limit).limits
    ]
    assert throttle.limits
    assert AuthThrottle("").limits == []
