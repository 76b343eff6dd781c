"""`/v1/sessions/{id}/auth` and `/v1/sessions/{id}/data-api` over the real local plane: enable,
status, users, OAuth providers, RLS through the real PostgREST client, restore, secrets only
for owners, foreign tokens answered 404, bad input answered 400 naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from litestar import Litestar
from postgrest import AsyncPostgrestClient

from agentdb.sdk import AgentDB, ConflictError, InvalidRequestError

from .conftest import Tenant, assert_problem, make_tenant, sql_runner

PASSWORD = "correct horse 1"


@pytest_asyncio.fixture(loop_scope="session")
async def web(localplane_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=localplane_app)) as client:
        yield client


async def sign_up(web: httpx.AsyncClient, base_url: str, email: str) -> dict[str, Any]:
    resp = await web.post(f"{base_url}/sign-up/email", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def rest(localplane_app: Litestar, url: str, token: str | None) -> AsyncPostgrestClient:
    client = AsyncPostgrestClient(
        url, http_client=httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app))
    )
    return client.auth(token) if token else client


async def test_auth_enable_status_users_providers_and_disable(
    http: httpx.AsyncClient, tenant: Tenant, web: httpx.AsyncClient
) -> None:
    s = f"/v1/sessions/{tenant.session_id}"
    off = (await http.get(f"{s}/auth", headers=tenant.user_token)).json()
    assert (off["enabled"], off["status"], off["secret_server_key"]) == (False, "disabled", None)
    assert_problem(await http.get(f"{s}/auth/users", headers=tenant.user_token), 409)

    # The agent turns it on; the agent's token never sees the server key, the owner's does.
    enabled = await http.post(f"{s}/auth", headers=tenant.session_token)
    assert enabled.status_code == 200, enabled.text
    body = enabled.json()
    assert body["enabled"] is True
    assert body["jwks_url"] == f"{body['base_url']}/.well-known/jwks.json"
    assert body["pub_client_key"]
    assert body["secret_server_key"] is None
    owner = (await http.get(f"{s}/auth", headers=tenant.user_token)).json()
    assert owner["secret_server_key"]
    assert (
        owner["secret_server_key"]
        not in (await http.get(f"{s}/events", headers=tenant.session_token)).text
    )
    again = await http.post(f"{s}/auth", headers=tenant.user_token)
    assert again.status_code == 200
    assert again.json()["base_url"] == body["base_url"]
    assert again.json()["secret_server_key"] == owner["secret_server_key"]

    await sign_up(web, body["base_url"], "carol@example.com")
    users = await http.get(f"{s}/auth/users", headers=tenant.session_token)
    assert users.status_code == 200, users.text
    assert [u["email"] for u in users.json()["users"]] == ["carol@example.com"]

    providers = f"{s}/auth/oauth-providers"
    added = await http.post(
        providers,
        json={"provider": "github", "client_id": "id-1", "client_secret": "very-secret"},
        headers=tenant.user_token,
    )
    assert added.status_code == 201, added.text
    assert added.json() == {"id": "github", "type": "standard", "client_id": "id-1"}
    listed = await http.get(providers, headers=tenant.session_token)
    assert listed.json() == {"providers": [added.json()]}
    assert "very-secret" not in listed.text
    assert_problem(
        await http.post(providers, json={"provider": "github"}, headers=tenant.user_token), 409
    )
    removed = await http.delete(f"{providers}/github", headers=tenant.user_token)
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"providers": []}

    gone = await http.delete(f"{s}/auth?delete_data=true", headers=tenant.user_token)
    assert gone.status_code == 200, gone.text
    assert gone.json()["enabled"] is False
    assert (await http.get(f"{s}/auth", headers=tenant.user_token)).json()["enabled"] is False
    assert_problem(await http.get(providers, headers=tenant.user_token), 409)


async def test_data_api_with_rls_survives_a_restore(
    http: httpx.AsyncClient, tenant: Tenant, web: httpx.AsyncClient, localplane_app: Litestar
) -> None:
    s = f"/v1/sessions/{tenant.session_id}"
    run = sql_runner(http, tenant.session_id, tenant.session_token)
    enabled = await http.post(f"{s}/data-api", headers=tenant.session_token)
    assert enabled.status_code == 200, enabled.text
    api = enabled.json()
    assert api["enabled"] is True
    assert api["url"]
    assert api["schemas"] == ["public"]
    auth = (await http.get(f"{s}/auth", headers=tenant.session_token)).json()
    assert auth["enabled"] is True
    assert api["jwks_url"] == auth["jwks_url"]
    assert (await http.post(f"{s}/data-api", json={}, headers=tenant.user_token)).json() == api
    assert_problem(await http.delete(f"{s}/auth", headers=tenant.user_token), 409)

    alice = await sign_up(web, auth["base_url"], "alice@example.com")
    bob = await sign_up(web, auth["base_url"], "bob@example.com")
    await run(
        """CREATE TABLE notes (id serial PRIMARY KEY,
                               owner text NOT NULL DEFAULT auth.user_id(), body text);
           ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
           CREATE POLICY own ON notes TO authenticated
               USING (owner = auth.user_id()) WITH CHECK (owner = auth.user_id())"""
    )
    await run(
        f"INSERT INTO notes (owner, body) VALUES ('{alice['user']['id']}', 'alice 1'),"
        f" ('{bob['user']['id']}', 'bob 1')"
    )
    refreshed = await http.patch(f"{s}/data-api", headers=tenant.session_token)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["url"] == api["url"]
    async with rest(localplane_app, api["url"], alice["token"]) as client:
        assert (await client.table("notes").select("body").execute()).data == [{"body": "alice 1"}]
    async with rest(localplane_app, api["url"], None) as anonymous:
        with pytest.raises(Exception, match="permission denied"):
            await anonymous.table("notes").select("*").execute()

    checkpoint = await http.post(
        f"{s}/checkpoints", json={"label": "notes"}, headers=tenant.session_token
    )
    assert checkpoint.status_code == 201, checkpoint.text
    await run(f"INSERT INTO notes (owner, body) VALUES ('{alice['user']['id']}', 'alice 2')")
    restored = await http.post(
        f"{s}/checkpoints/{checkpoint.json()['id']}/restore", headers=tenant.session_token
    )
    assert restored.status_code == 200, restored.text

    after = (await http.get(f"{s}/data-api", headers=tenant.session_token)).json()
    assert after["enabled"] is True
    # The URLs name the session's endpoint, which the restore moved to the new live branch:
    # the app keeps the ones it had, and a token issued before the restore still works there.
    assert after["url"] == api["url"]
    async with rest(localplane_app, api["url"], alice["token"]) as client:
        assert (await client.table("notes").select("body").execute()).data == [{"body": "alice 1"}]
    auth_after = (await http.get(f"{s}/auth", headers=tenant.session_token)).json()
    assert auth_after["base_url"] == auth["base_url"]
    signed_in = await web.post(
        f"{auth_after['base_url']}/sign-in/email",
        json={"email": "alice@example.com", "password": PASSWORD},
    )
    assert signed_in.status_code == 200, signed_in.text
    async with rest(localplane_app, after["url"], signed_in.json()["token"]) as client:
        rows = await client.table("notes").select("body").execute()
        assert rows.data == [{"body": "alice 1"}]

    # Turning it off is the platform's call, not the agent's.
    refused = assert_problem(await http.delete(f"{s}/data-api", headers=tenant.session_token), 403)
    assert "user or admin token" in refused["detail"]
    disabled = await http.delete(f"{s}/data-api", headers=tenant.user_token)
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["enabled"], disabled.json()["url"]) == (False, None)
    assert_problem(await http.patch(f"{s}/data-api", headers=tenant.session_token), 409)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/auth/oauth-providers", {"provider": "facebook"}, "provider"),
        (
            "POST",
            "/auth/oauth-providers",
            {"provider": "github", "client_id": "x"},
            "client_secret",
        ),
        ("POST", "/auth/oauth-providers", {"provider": "github", "scopes": []}, "scopes"),
        ("POST", "/auth/oauth-providers", {}, "provider"),
        ("DELETE", "/auth/oauth-providers/myspace", None, "provider"),
        ("GET", "/auth/users?limit=0", None, "limit"),
        ("DELETE", "/auth?delete_data=maybe", None, "delete_data"),
        ("POST", "/data-api", {"add_default_grants": "maybe"}, "add_default_grants"),
        ("POST", "/data-api", {"grants": True}, "grants"),
        ("POST", "/data-api", {"cors_allowed_origins": ["localhost:5173"]}, "cors_allowed_origins"),
        ("POST", "/data-api", {"cors_allowed_origins": []}, "cors_allowed_origins"),
        ("POST", "/data-api", {"cors_allowed_origins": "*"}, "cors_allowed_origins"),
        (
            "POST",
            "/data-api",
            {"cors_allowed_origins": ["*", "http://a.example"]},
            "cors_allowed_origins",
        ),
        ("PATCH", "/data-api", {"cors_allowed_origins": ["http://a/b"]}, "cors_allowed_origins"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(  # noqa: PLR0917
    http: httpx.AsyncClient, tenant: Tenant, method: str, path: str, body: Any, field: str
) -> None:
    s = f"/v1/sessions/{tenant.session_id}"
    response = await http.request(method, s + path, json=body, headers=tenant.user_token)
    assert_problem(response, 400, field)
    events = (await http.get(f"{s}/events", headers=tenant.user_token)).json()["events"]
    assert not [e for e in events if e["action"].startswith(("auth", "data_api"))]


async def test_the_data_api_answers_the_browser_origins_it_is_given(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    s = f"/v1/sessions/{tenant.session_id}"
    app = "http://localhost:5173"
    enabled = await http.post(
        f"{s}/data-api", json={"cors_allowed_origins": [app]}, headers=tenant.session_token
    )
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["cors_allowed_origins"] == [app]
    events = (await http.get(f"{s}/events", headers=tenant.user_token)).json()["events"]
    changed = await http.patch(
        f"{s}/data-api",
        json={"cors_allowed_origins": [app, "https://app.example.com:8443"]},
        headers=tenant.session_token,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["cors_allowed_origins"] == [app, "https://app.example.com:8443"]
    after = (await http.get(f"{s}/events", headers=tenant.user_token)).json()["events"]
    (refresh,) = [e for e in after if e not in events and e["action"] == "data_api.refresh"]
    assert refresh["details"]["cors"] == [app, "https://app.example.com:8443"]
    # A refresh without a body leaves them; ["*"] answers any origin again.
    assert (await http.patch(f"{s}/data-api", headers=tenant.session_token)).json()[
        "cors_allowed_origins"
    ] == [app, "https://app.example.com:8443"]
    anyone = await http.patch(
        f"{s}/data-api", json={"cors_allowed_origins": ["*"]}, headers=tenant.session_token
    )
    assert anyone.json()["cors_allowed_origins"] == ["*"]


async def test_foreign_tokens_get_404_on_every_addon_route_and_change_nothing(
    http: httpx.AsyncClient, web: httpx.AsyncClient
) -> None:
    victim = await make_tenant(http, "victim")
    intruder = await make_tenant(http, "intruder")
    s = f"/v1/sessions/{victim.session_id}"
    assert (await http.post(f"{s}/data-api", headers=victim.user_token)).status_code == 200
    providers = f"{s}/auth/oauth-providers"
    assert (
        await http.post(providers, json={"provider": "google"}, headers=victim.user_token)
    ).status_code == 201
    before_auth = (await http.get(f"{s}/auth", headers=victim.user_token)).json()
    before_api = (await http.get(f"{s}/data-api", headers=victim.user_token)).json()

    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"{s}/auth", None),
        ("GET", f"{s}/auth", None),
        ("DELETE", f"{s}/auth?delete_data=true", None),
        ("GET", f"{s}/auth/users", None),
        ("GET", providers, None),
        ("POST", providers, {"provider": "github"}),
        ("DELETE", f"{providers}/google", None),
        ("POST", f"{s}/data-api", {}),
        ("GET", f"{s}/data-api", None),
        ("PATCH", f"{s}/data-api", None),
        ("DELETE", f"{s}/data-api", None),
    ]
    for token in (intruder.user_token, intruder.session_token):
        for method, path, body in calls:
            response = await http.request(method, path, json=body, headers=token)
            assert_problem(response, 404)
            assert victim.session_id in response.json()["detail"]

    assert (await http.get(f"{s}/auth", headers=victim.user_token)).json() == before_auth
    assert (await http.get(f"{s}/data-api", headers=victim.user_token)).json() == before_api
    listed = (await http.get(providers, headers=victim.user_token)).json()["providers"]
    assert [p["id"] for p in listed] == ["google"]
    events = (await http.get(f"{s}/events", headers=victim.user_token)).json()["events"]
    assert {e["actor"] for e in events if e["action"].startswith(("auth", "data_api"))} == {
        e["actor"] for e in events if e["action"] == "data_api.enable"
    }


async def test_the_sdk_drives_every_addon_route(
    api_app: Litestar, tenant: Tenant, web: httpx.AsyncClient
) -> None:
    token = tenant.user_token["Authorization"].removeprefix("Bearer ")
    async with AgentDB.connect(
        "http://agentdb", token, transport=httpx.ASGITransport(app=api_app)
    ) as db:
        sid = tenant.session_id
        auth = await db.enable_auth(sid)
        assert auth.enabled
        assert auth.secret_server_key  # the owner's token
        assert (await db.get_auth(sid)).base_url == auth.base_url
        assert auth.base_url is not None
        await sign_up(web, auth.base_url, "dave@example.com")
        assert [u.email for u in await db.list_auth_users(sid)] == ["dave@example.com"]
        added = await db.add_oauth_provider(sid, "vercel")
        assert (added.id, added.type) == ("vercel", "shared")
        assert [p.id for p in await db.list_oauth_providers(sid)] == ["vercel"]
        assert await db.delete_oauth_provider(sid, "vercel") == []

        api = await db.enable_data_api(sid, add_default_grants=False)
        assert (api.enabled, api.default_grants) == (True, False)
        assert (await db.get_data_api(sid)).url == api.url
        assert (await db.refresh_data_api(sid)).url == api.url
        with pytest.raises(ConflictError):
            await db.disable_auth(sid)
        assert not (await db.disable_data_api(sid)).enabled
        assert not (await db.disable_auth(sid, delete_data=True)).enabled
        with pytest.raises(InvalidRequestError) as bad:
            await db.add_oauth_provider(sid, "facebook")
        assert bad.value.status == 400
