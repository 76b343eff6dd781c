"""Neon Auth on the local plane: Neon-shaped endpoints (requests and responses checked against the
OpenAPI document), the `neon_auth` schema, a served JWKS, local sign-up/sign-in with signed JWTs,
and what a snapshot restore keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from litestar import Litestar
from support import client_for

from agentdb.neon import NeonClient, NeonNotFound
from agentdb.neon._errors import NeonHTTPError

from .helpers import create_project, fetch, wait_ops

USERS_SYNC_COLUMNS = {
    "id",
    "email",
    "name",
    "email_verified",
    "signed_in_at",
    "created_at",
    "updated_at",
    "deleted_at",
    "raw_json",
}


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    """agentdb's Neon client on the local plane; every request and answer checked by the spec."""
    hooks = {"request": [neon_spec.request_hook()], "response": [neon_spec.response_hook()]}
    async with NeonClient.for_app(localplane_app, api_key="test-key", event_hooks=hooks) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def web(localplane_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client of the plane's services (absolute URLs, as handed out by the API)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=localplane_app)) as client:
        yield client


async def sign_up(web: httpx.AsyncClient, base: str, email: str, name: str) -> dict[str, Any]:
    resp = await web.post(
        f"{base}/sign-up/email", json={"email": email, "password": "correct horse 1", "name": name}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_enable_creates_neon_auth_schema_and_serves_a_jwks(
    neon_http: httpx.AsyncClient, neon: NeonClient, web: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]

    enabled = await neon.enable_neon_auth(project_id, branch_id)
    assert enabled.auth_provider == "better_auth"
    assert enabled.schema_name == "neon_auth"
    assert enabled.table_name == "users_sync"
    # Like Neon's `https://<endpoint>.neonauth.<region>/<database>/auth`: it names the compute
    # endpoint, which a finalized restore moves to the restored branch.
    endpoint_id = created["endpoints"][0]["id"]
    assert enabled.base_url == f"http://localplane/neon-auth/{endpoint_id}/neondb/auth"
    assert enabled.jwks_url == f"{enabled.base_url}/.well-known/jwks.json"

    status = await neon.get_neon_auth(project_id, branch_id)
    assert (status.branch_id, status.db_name, status.owned_by) == (branch_id, "neondb", "user")
    assert status.jwks_url == enabled.jwks_url

    columns = await fetch(
        uri,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'neon_auth' AND table_name = 'users_sync'",
    )
    assert {c for (c,) in columns} >= USERS_SYNC_COLUMNS
    # The owner reads the users but never the password hashes.
    assert await fetch(uri, "SELECT count(*) FROM neon_auth.users_sync") == [(0,)]
    with pytest.raises(Exception, match="permission denied"):
        await fetch(uri, "SELECT * FROM neon_auth.account")

    keys = (await web.get(enabled.jwks_url)).json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC"
    assert keys[0]["alg"] == "ES256"
    assert "d" not in keys[0], "the private key must never be served"

    with pytest.raises(NeonHTTPError) as again:
        await neon.enable_neon_auth(project_id, branch_id)
    assert again.value.status == 409


async def test_two_users_sign_up_appear_in_users_sync_and_their_jwts_verify(
    neon_http: httpx.AsyncClient, neon: NeonClient, web: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    enabled = await neon.enable_neon_auth(project_id, branch_id)
    base = enabled.base_url
    assert base is not None

    alice = await sign_up(web, base, "Alice@Example.com", "Alice")
    bob = await sign_up(web, base, "bob@example.com", "Bob")
    rows = await fetch(
        uri,
        "SELECT id, email, name, email_verified, raw_json->>'email' FROM neon_auth.users_sync"
        " ORDER BY email",
    )
    assert rows == [
        (alice["user"]["id"], "alice@example.com", "Alice", False, "alice@example.com"),
        (bob["user"]["id"], "bob@example.com", "Bob", False, "bob@example.com"),
    ]

    jwks = KeySet.import_key_set((await web.get(enabled.jwks_url)).json())
    for session, email in ((alice, "alice@example.com"), (bob, "bob@example.com")):
        token = jwt.decode(session["token"], jwks, algorithms=["ES256"])
        jwt.JWTClaimsRegistry(exp={"essential": True}).validate(token.claims)
        assert token.claims["sub"] == session["user"]["id"]
        assert token.claims["email"] == email
        assert token.claims["role"] == "authenticated"
        assert token.header["alg"] == "ES256"
    with pytest.raises(BadSignatureError):
        jwt.decode(alice["token"][:-4] + "AAAA", jwks, algorithms=["ES256"])

    signed_in = await web.post(
        f"{base}/sign-in/email", json={"email": "alice@example.com", "password": "correct horse 1"}
    )
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["user"]["id"] == alice["user"]["id"]
    claims = jwt.decode(signed_in.json()["token"], jwks, algorithms=["ES256"]).claims
    assert claims["sub"] == alice["user"]["id"]
    assert await fetch(
        uri,
        "SELECT signed_in_at > created_at FROM neon_auth.users_sync WHERE id = %s",
        (alice["user"]["id"],),
    ) in ([(True,)], [(False,)])


async def test_sign_up_and_sign_in_reject_bad_input(
    neon_http: httpx.AsyncClient, neon: NeonClient, web: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    base = f"http://localplane/neon-auth/{created['endpoints'][0]['id']}/neondb/auth"

    not_enabled = await web.post(
        f"{base}/sign-up/email", json={"email": "a@b.c", "password": "long enough 1"}
    )
    assert not_enabled.status_code == 404
    assert "not enabled" in not_enabled.json()["message"]

    await neon.enable_neon_auth(project_id, branch_id)
    await sign_up(web, base, "carol@example.com", "Carol")
    duplicate = await web.post(
        f"{base}/sign-up/email", json={"email": "CAROL@example.com", "password": "another one 2"}
    )
    assert duplicate.status_code == 422
    assert duplicate.json()["code"] == "USER_ALREADY_EXISTS"
    short = await web.post(f"{base}/sign-up/email", json={"email": "d@e.f", "password": "short"})
    assert short.status_code == 400
    assert "password" in short.json()["message"]
    bad_email = await web.post(
        f"{base}/sign-up/email", json={"email": "no-at-sign", "password": "long enough 1"}
    )
    assert bad_email.status_code == 400

    for email, password in (("carol@example.com", "wrong password"), ("nobody@x.y", "whatever1")):
        denied = await web.post(
            f"{base}/sign-in/email", json={"email": email, "password": password}
        )
        assert denied.status_code == 401
        assert denied.json()["message"] == "invalid email or password"
    # Failed attempts wrote nothing.
    assert await fetch(uri, "SELECT email FROM neon_auth.users_sync") == [("carol@example.com",)]


async def test_oauth_providers_and_disable(neon_http: httpx.AsyncClient, neon: NeonClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    with pytest.raises(NeonNotFound):
        await neon.get_neon_auth(project_id, branch_id)
    await neon.enable_neon_auth(project_id, branch_id)

    assert await neon.list_oauth_providers(project_id, branch_id) == []
    shared = await neon.add_oauth_provider(project_id, branch_id, "google")
    assert (shared.id, shared.type, shared.client_id) == ("google", "shared", None)
    own = await neon.add_oauth_provider(
        project_id, branch_id, "github", client_id="gh-id", client_secret="gh-secret"
    )
    assert (own.type, own.client_id, own.client_secret) == ("standard", "gh-id", None)
    updated = await neon.update_oauth_provider(project_id, branch_id, "google", client_id="g-id")
    assert (updated.type, updated.client_id) == ("standard", "g-id")
    with pytest.raises(NeonHTTPError) as twice:
        await neon.add_oauth_provider(project_id, branch_id, "github")
    assert twice.value.status == 409
    await neon.delete_oauth_provider(project_id, branch_id, "github")
    assert [p.id for p in await neon.list_oauth_providers(project_id, branch_id)] == ["google"]
    with pytest.raises(NeonNotFound):
        await neon.delete_oauth_provider(project_id, branch_id, "github")

    # Disabling keeps the data unless asked to delete it.
    await neon.disable_neon_auth(project_id, branch_id)
    with pytest.raises(NeonNotFound):
        await neon.get_neon_auth(project_id, branch_id)
    assert await fetch(uri, "SELECT to_regclass('neon_auth.users_sync') IS NOT NULL") == [(True,)]
    await neon.enable_neon_auth(project_id, branch_id)
    await neon.disable_neon_auth(project_id, branch_id, delete_data=True)
    assert await fetch(uri, "SELECT to_regnamespace('neon_auth') IS NULL") == [(True,)]


async def test_enable_rejects_bad_requests(
    localplane_app: Litestar, neon_spec: NeonSpec, neon_http: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    path = f"/projects/{project_id}/branches/{branch_id}/auth"
    async with client_for(localplane_app, neon_spec, validate_requests=False) as raw:
        unknown = await raw.post(path, json={"auth_provider": "okta"})
        assert unknown.status_code == 400
        assert "auth_provider" in unknown.json()["message"]
        missing_db = await raw.post(
            path, json={"auth_provider": "better_auth", "database_name": "nope"}
        )
        assert missing_db.status_code == 404
        no_branch = await raw.post(
            f"/projects/{project_id}/branches/br-none-00000000/auth",
            json={"auth_provider": "better_auth"},
        )
        assert no_branch.status_code == 404
        assert (await raw.get(path)).status_code == 404  # nothing was half-enabled
    uri = created["connection_uris"][0]["connection_uri"]
    assert await fetch(uri, "SELECT to_regnamespace('neon_auth') IS NULL") == [(True,)]


async def test_a_restored_branch_keeps_its_users_and_signing_key(
    neon_http: httpx.AsyncClient, neon: NeonClient, web: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    enabled = await neon.enable_neon_auth(project_id, main_id)
    assert enabled.base_url is not None
    dave = await sign_up(web, enabled.base_url, "dave@example.com", "Dave")

    snap = await neon_http.post(f"/projects/{project_id}/branches/{main_id}/snapshot")
    assert snap.status_code == 200, snap.text
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    await sign_up(web, enabled.base_url, "erin@example.com", "Erin")

    restored = await neon_http.post(
        f"/projects/{project_id}/snapshots/{snap.json()['snapshot']['id']}/restore",
        json={"target_branch_id": main_id, "finalize_restore": True},
    )
    assert restored.status_code == 200, restored.text
    await wait_ops(neon_http, project_id, restored.json()["operations"])
    live_id = restored.json()["branch"]["id"]
    assert live_id != main_id

    status = await neon.get_neon_auth(project_id, live_id)
    assert status.branch_id == live_id
    live_base = status.base_url
    assert live_base == f"http://localplane/neon-auth/{created['endpoints'][0]['id']}/neondb/auth"
    live_keys = KeySet.import_key_set((await web.get(status.jwks_url)).json())
    # A token issued before the restore still verifies: the key pair followed the data.
    assert (
        jwt.decode(dave["token"], live_keys, algorithms=["ES256"]).claims["sub"]
        == (dave["user"]["id"])
    )
    uri = created["connection_uris"][0]["connection_uri"]  # the live database's name is kept
    assert await fetch(uri, "SELECT email FROM neon_auth.users_sync") == [("dave@example.com",)]
    again = await web.post(
        f"{live_base}/sign-in/email",
        json={"email": "dave@example.com", "password": "correct horse 1"},
    )
    assert again.status_code == 200, again.text
    gone = await web.post(
        f"{live_base}/sign-in/email",
        json={"email": "erin@example.com", "password": "correct horse 1"},
    )
    assert gone.status_code == 401  # Erin signed up after the checkpoint
