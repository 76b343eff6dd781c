"""One plain `agentdb serve` (zero configuration but the admin token) for the tests that drive
it the way an app an agent builds does: through the Neon Auth and Data API URLs a session hands
out, with the clients apps use (tests/js: postgrest-js, better-auth; Python's postgrest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from support import API_LINE, clean_env, serving

ADMIN_TOKEN = "adb_admin_apps-test-token-0123456789abcdef"
PASSWORD = "correct horse battery 1"


@dataclass
class Served:
    """`agentdb serve` at `url`, reached with the admin token by `admin`."""

    url: str
    admin: httpx.Client


@dataclass
class AppSession:
    """A session with Neon Auth and the Data API on, and the tokens that reach it."""

    id: str
    api: httpx.Client  # agentdb's /v1, as the session's agent (session token)
    owner: httpx.Client  # agentdb's /v1, as the session's user (user token)
    auth_url: str  # Neon Auth's base URL, as handed out
    jwks_url: str
    data_api_url: str  # the Data API's URL, as handed out

    def sql(self, statement: str) -> Any:
        done = self.api.post(f"/v1/sessions/{self.id}/sql", json={"sql": statement})
        assert done.status_code == 200, done.text
        return done.json()["rows"]


@pytest.fixture(scope="package")  # stopped once tests/apps is done
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("apps") / "data"
    env = clean_env(AGENTDB_ADMIN_TOKEN=ADMIN_TOKEN)
    with (
        serving(env, data_dir, ("serve",), API_LINE) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as admin,
    ):
        yield Served(url, admin)


@pytest.fixture
def app_session(served: Served, request: pytest.FixtureRequest) -> Iterator[AppSession]:
    """A new user's session with Neon Auth and the Data API on; deleted afterwards, whether
    the test passed or not."""
    admin = served.admin
    name = request.node.name[:40]
    user = admin.post("/v1/users", json={"email": f"{name.replace('_', '-')}@example.com"})
    assert user.status_code == 201, user.text
    user_token = admin.post(f"/v1/users/{user.json()['id']}/tokens", json={}).json()["token"]
    with httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {user_token}"}, timeout=60
    ) as owner:
        made = owner.post("/v1/sessions", json={"name": name})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        try:
            session_token = owner.post(f"/v1/sessions/{sid}/tokens", json={}).json()["token"]
            with httpx.Client(
                base_url=served.url,
                headers={"Authorization": f"Bearer {session_token}"},
                timeout=60,
            ) as api:
                auth = api.post(f"/v1/sessions/{sid}/auth")
                assert auth.status_code == 200, auth.text
                data_api = api.post(f"/v1/sessions/{sid}/data-api")
                assert data_api.status_code == 200, data_api.text
                yield AppSession(
                    id=sid,
                    api=api,
                    owner=owner,
                    auth_url=auth.json()["base_url"],
                    jwks_url=auth.json()["jwks_url"],
                    data_api_url=data_api.json()["url"],
                )
        finally:
            owner.delete(f"/v1/sessions/{sid}")
