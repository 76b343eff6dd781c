"""The attack suite's target: `agentdb serve` over real HTTP, on a served local control plane
(as on Neon cloud: the add-ons' URLs are reachable), both in subprocesses with their own
embedded PostgreSQL. Attacks come in as an agent would, with a session token only."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import API_LINE, clean_env, serving

PLANE_KEY = "security-suite-plane-key"


@dataclass
class Stack:
    """The served plane and agentdb, and every secret they handed out (for the log grep)."""

    api: str
    plane: str
    admin_token: str
    data_dirs: list[Path]
    handed_out: set[str] = field(default_factory=set)

    def client(self, token: str | None, base: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=base or self.api, headers=headers, timeout=120)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def keep(self, *values: Any) -> None:
        """Remembers secrets to look for in the logs later."""
        self.handed_out.update(str(value) for value in values if value)


@dataclass
class Tenant:
    user_id: str
    user_token: str
    session_id: str
    session_token: str
    connection_uri: str


def open_tenant(stack: Stack, email: str) -> Tenant:
    with stack.admin() as admin:
        user = admin.post("/v1/users", json={"email": email})
        assert user.status_code == 201, user.text
        user_id = user.json()["id"]
        token = admin.post(f"/v1/users/{user_id}/tokens", json={})
        assert token.status_code == 201, token.text
        user_token = token.json()["token"]
    with stack.client(user_token) as http:
        session = http.post("/v1/sessions", json={"name": email})
        assert session.status_code == 201, session.text
        session_id = session.json()["id"]
        issued = http.post(f"/v1/sessions/{session_id}/tokens", json={})
        assert issued.status_code == 201, issued.text
        uri = http.get(f"/v1/sessions/{session_id}").json()["connection_uri"]
    tenant = Tenant(user_id, user_token, session_id, issued.json()["token"], uri)
    stack.keep(tenant.user_token, tenant.session_token, tenant.connection_uri)
    return tenant


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("security")
    admin_token = "adb_admin_" + secrets.token_urlsafe(32).replace("-", "a").replace("_", "b")
    plane_dir, agentdb_dir = root / "plane", root / "agentdb"
    with serving(clean_env(AGENTDB_LOCALPLANE_API_KEY=PLANE_KEY), plane_dir) as plane_url:
        env = clean_env(
            AGENTDB_NEON_API_KEY=PLANE_KEY,
            AGENTDB_NEON_API_URL=plane_url,
            AGENTDB_ADMIN_TOKEN=admin_token,
            # Every debug line too: none may carry a secret.
            AGENTDB_LOG_LEVEL="debug",
            # The chat demo runs SQL: the suite checks it refuses strangers.
            AGENTDB_DEMO="true",
        )
        with serving(env, agentdb_dir, ("serve",), API_LINE, []) as api_url:
            found = Stack(api_url, plane_url, admin_token, [plane_dir, agentdb_dir])
            found.keep(admin_token)
            yield found


@pytest.fixture(scope="package")
def attacker(stack: Stack) -> Tenant:
    return open_tenant(stack, "mallory@example.com")


@pytest.fixture(scope="package")
def victim(stack: Stack) -> Tenant:
    tenant = open_tenant(stack, "victim@example.com")
    with stack.client(tenant.session_token) as http:
        made = http.post(
            f"/v1/sessions/{tenant.session_id}/sql",
            json={
                "sql": "create table secrets (v text); insert into secrets values ('victim-row')"
            },
        )
        assert made.status_code == 200, made.text
    return tenant


def run_sql(stack: Stack, tenant: Tenant, sql: str) -> httpx.Response:
    with stack.client(tenant.session_token) as http:
        return http.post(f"/v1/sessions/{tenant.session_id}/sql", json={"sql": sql})


def is_superuser(stack: Stack, tenant: Tenant) -> bool:
    answer = run_sql(stack, tenant, "select rolsuper from pg_roles where rolname = current_user")
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["rows"][0][0])
