"""Every route, called with a token of another user or of another session, answers 404 (as for
an id that does not exist) and changes nothing; what a session token reaches but may not do
(destroy its session, checkpoints or add-ons, see or mint tokens) answers 403 saying which token
can."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import pytest_asyncio

from .conftest import ADMIN, Tenant, assert_problem, make_tenant, sql_runner


class Victim:
    """A tenant whose session has a table, a checkpoint and a dev branch."""

    def __init__(
        self, tenant: Tenant, checkpoint_id: str, branch_id: str, token_ids: list[str]
    ) -> None:
        self.tenant = tenant
        self.checkpoint_id = checkpoint_id
        self.branch_id = branch_id
        self.token_ids = token_ids


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def victim(api_app: Any) -> Victim:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api_app), base_url="http://agentdb", timeout=60
    ) as http:
        tenant = await make_tenant(http, "victim")
        await sql_runner(http, tenant.session_id, tenant.user_token)(
            "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('mine')"
        )
        checkpoint = await http.post(
            f"/v1/sessions/{tenant.session_id}/checkpoints",
            json={"label": "v1"},
            headers=tenant.user_token,
        )
        assert checkpoint.status_code == 201, checkpoint.text
        branch = await http.post(
            f"/v1/sessions/{tenant.session_id}/branches", json={}, headers=tenant.user_token
        )
        assert branch.status_code == 201, branch.text
        tokens = await http.get(f"/v1/users/{tenant.user_id}/tokens", headers=ADMIN)
        token_ids = [t["id"] for t in tokens.json()["tokens"]]
        assert len(token_ids) == 2
        return Victim(tenant, checkpoint.json()["id"], branch.json()["id"], token_ids)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def intruder(api_app: Any) -> Tenant:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api_app), base_url="http://agentdb", timeout=60
    ) as http:
        return await make_tenant(http, "intruder")


def routes(v: Victim, intruder: Tenant) -> list[tuple[str, str, dict[str, Any] | None]]:
    uid, sid = v.tenant.user_id, v.tenant.session_id
    cid, bid = v.checkpoint_id, v.branch_id
    s = f"/v1/sessions/{sid}"
    return [
        ("GET", f"/v1/users/{uid}", None),
        ("POST", f"/v1/users/{uid}/tokens", {}),
        ("GET", f"/v1/users/{uid}/usage", None),
        ("GET", f"/v1/users/{uid}/tier-changes", None),
        ("GET", f"/v1/users/{uid}/tokens", None),
        *[("GET", f"/v1/tokens/{t}", None) for t in v.token_ids],
        *[("DELETE", f"/v1/tokens/{t}", None) for t in v.token_ids],
        ("GET", f"/v1/sessions?user_id={uid}", None),
        ("POST", "/v1/sessions", {"user_id": uid}),
        ("GET", s, None),
        ("DELETE", s, None),
        ("POST", f"{s}/tokens", {}),
        ("GET", f"{s}/tokens", None),
        ("DELETE", f"{s}/auth", None),
        ("DELETE", f"{s}/data-api", None),
        ("POST", f"{s}/sql", {"sql": "DELETE FROM secrets"}),
        ("GET", f"{s}/events", None),
        ("GET", f"{s}/usage", None),
        ("POST", f"{s}/checkpoints", {"label": "theirs"}),
        ("GET", f"{s}/checkpoints", None),
        ("GET", f"{s}/checkpoints/{cid}", None),
        ("DELETE", f"{s}/checkpoints/{cid}", None),
        ("POST", f"{s}/checkpoints/{cid}/restore", None),
        ("POST", f"{s}/checkpoints/{cid}/preview", {}),
        ("GET", f"{s}/checkpoints/{cid}/diff?against=HEAD", None),
        ("POST", f"{s}/branches", {}),
        ("GET", f"{s}/branches", None),
        ("POST", f"{s}/branches/{bid}/reset", None),
        ("DELETE", f"{s}/branches/{bid}", None),
        # The victim's ids under the intruder's own session.
        ("GET", f"/v1/sessions/{intruder.session_id}/checkpoints/{cid}", None),
        ("DELETE", f"/v1/sessions/{intruder.session_id}/checkpoints/{cid}", None),
        ("POST", f"/v1/sessions/{intruder.session_id}/checkpoints/{cid}/restore", None),
        ("POST", f"/v1/sessions/{intruder.session_id}/checkpoints/{cid}/preview", {}),
        ("GET", f"/v1/sessions/{intruder.session_id}/checkpoints/{cid}/diff", None),
        ("POST", f"/v1/sessions/{intruder.session_id}/branches", {"checkpoint_id": cid}),
        ("POST", f"/v1/sessions/{intruder.session_id}/branches/{bid}/reset", None),
        ("DELETE", f"/v1/sessions/{intruder.session_id}/branches/{bid}", None),
    ]


async def state_of(http: httpx.AsyncClient, v: Victim) -> dict[str, Any]:
    t = v.tenant
    s = f"/v1/sessions/{t.session_id}"
    session = (await http.get(s, headers=ADMIN)).json()
    return {
        "session": {k: session[k] for k in ("status", "head_checkpoint_id", "updated_at")},
        "checkpoints": (await http.get(f"{s}/checkpoints", headers=ADMIN)).json(),
        "branches": [
            (b["id"], b["status"])
            for b in (await http.get(f"{s}/branches", headers=ADMIN)).json()["branches"]
        ],
        # The state's own SQL read below is an event (`sql.run`): the others must not move.
        "events": len(
            [
                e
                for e in (await http.get(f"{s}/events?limit=500", headers=ADMIN)).json()["events"]
                if e["action"] != "sql.run"
            ]
        ),
        # Using a token updates its last_used_at; what counts is which tokens still work.
        "tokens": [
            (x["id"], x["revoked_at"], x["expires_at"])
            for x in (
                await http.get(f"/v1/users/{t.user_id}/tokens?include_inactive=true", headers=ADMIN)
            ).json()["tokens"]
        ],
        "rows": await sql_runner(http, t.session_id, ADMIN)("SELECT v FROM secrets"),
        "sessions": [
            x["id"]
            for x in (await http.get(f"/v1/sessions?user_id={t.user_id}", headers=ADMIN)).json()[
                "sessions"
            ]
        ],
    }


@pytest.mark.parametrize("who", ["other user", "other session", "own user's other session"])
async def test_foreign_tokens_get_404_on_every_route_and_change_nothing(
    http: httpx.AsyncClient, victim: Victim, intruder: Tenant, who: str
):
    if who == "other user":
        headers = intruder.user_token
    elif who == "other session":
        headers = intruder.session_token
    else:
        # A second session of the victim's own user; its token must not reach the first.
        other = await http.post("/v1/sessions", json={}, headers=victim.tenant.user_token)
        token = await http.post(
            f"/v1/sessions/{other.json()['id']}/tokens", json={}, headers=victim.tenant.user_token
        )
        headers = {"Authorization": f"Bearer {token.json()['token']}"}
    before = await state_of(http, victim)
    checked = 0
    for method, path, body in routes(victim, intruder):
        if who == "own user's other session" and "/v1/sessions/" + intruder.session_id in path:
            continue  # those name the intruder's session, which this token doesn't reach either
        if who == "own user's other session" and path.startswith("/v1/sessions?user_id="):
            continue  # its own user: it lists just its own session
        response = await http.request(method, path, json=body, headers=headers)
        own_checkpoint_delete = method == "DELETE" and path.startswith(
            f"/v1/sessions/{intruder.session_id}/checkpoints/"
        )
        if who == "other session" and own_checkpoint_delete:
            # Its own session: a session token may not delete checkpoints at all (said before
            # any lookup of the id).
            assert_problem(response, 403)
        elif method == "POST" and path == "/v1/sessions" and who != "other user":
            # A session token may not open sessions at all.
            assert_problem(response, 403)
        else:
            assert response.status_code == 404, (method, path, response.text)
            assert_problem(response, 404)
        checked += 1
    assert checked >= 18
    assert await state_of(http, victim) == before


async def test_non_admin_tokens_cannot_manage_users(http: httpx.AsyncClient, intruder: Tenant):
    for headers in (intruder.user_token, intruder.session_token):
        assert_problem(
            await http.post("/v1/users", json={"email": "x@example.com"}, headers=headers), 403
        )
        assert_problem(await http.get("/v1/users", headers=headers), 403)
        # Tiers are the platform's to give, not a user's (nor an agent's) to take.
        moved = await http.post(
            f"/v1/users/{intruder.user_id}/tier", json={"tier": "enterprise"}, headers=headers
        )
        assert_problem(moved, 403)
    users = (await http.get("/v1/users?limit=500", headers=ADMIN)).json()["users"]
    assert "x@example.com" not in [u["email"] for u in users]
    me = (await http.get(f"/v1/users/{intruder.user_id}", headers=ADMIN)).json()
    assert me["tier"] == "free"
    changes = await http.get(f"/v1/users/{intruder.user_id}/tier-changes", headers=ADMIN)
    assert changes.json() == {"tier_changes": []}


async def test_a_session_token_cannot_destroy_what_it_depends_on(http: httpx.AsyncClient):
    agent = await make_tenant(http, "agent")
    s = f"/v1/sessions/{agent.session_id}"
    checkpoint = await http.post(f"{s}/checkpoints", json={"label": "keep"}, headers=ADMIN)
    assert checkpoint.status_code == 201, checkpoint.text
    cid = checkpoint.json()["id"]
    before = {
        "session": (await http.get(s, headers=ADMIN)).json()["status"],
        "checkpoints": (await http.get(f"{s}/checkpoints", headers=ADMIN)).json(),
        "tokens": [
            (x["id"], x["revoked_at"])
            for x in (await http.get(f"{s}/tokens", headers=ADMIN)).json()["tokens"]
        ],
    }
    for method, path in [
        ("DELETE", s),
        ("DELETE", f"{s}/checkpoints/{cid}"),
        ("DELETE", f"{s}/checkpoints/{agent.session['head_checkpoint_id']}"),
        ("DELETE", f"{s}/auth"),
        ("DELETE", f"{s}/data-api"),
        ("GET", f"{s}/tokens"),
        ("POST", f"{s}/tokens"),
    ]:
        response = await http.request(method, path, headers=agent.session_token)
        problem = assert_problem(response, 403)
        assert "user or admin token" in problem["detail"], (method, path)
    after = {
        "session": (await http.get(s, headers=ADMIN)).json()["status"],
        "checkpoints": (await http.get(f"{s}/checkpoints", headers=ADMIN)).json(),
        "tokens": [
            (x["id"], x["revoked_at"])
            for x in (await http.get(f"{s}/tokens", headers=ADMIN)).json()["tokens"]
        ],
    }
    assert after == before
    assert before["session"] == "ready"
    # The same calls with the user's token go through.
    root = agent.session["head_checkpoint_id"]
    deleted = await http.delete(f"{s}/checkpoints/{root}", headers=agent.user_token)
    assert deleted.status_code == 200, deleted.text
    gone = await http.delete(s, headers=agent.user_token)
    assert gone.status_code == 200, gone.text


async def test_session_token_cannot_mint_tokens_for_its_session(
    http: httpx.AsyncClient, intruder: Tenant
):
    response = await http.post(
        f"/v1/sessions/{intruder.session_id}/tokens", json={}, headers=intruder.session_token
    )
    assert_problem(response, 403)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer adb_user_not-a-real-token"},
    ],
)
async def test_missing_or_unknown_tokens_get_401(http: httpx.AsyncClient, headers: dict[str, str]):
    response = await http.get("/v1/sessions", headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_deleted_sessions_token_stops_working(http: httpx.AsyncClient):
    tenant = await make_tenant(http, "shortlived")
    deleted = await http.delete(f"/v1/sessions/{tenant.session_id}", headers=tenant.user_token)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    assert_problem(
        await http.get(f"/v1/sessions/{tenant.session_id}", headers=tenant.session_token), 401
    )
