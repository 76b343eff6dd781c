"""The issue's remaining reproducers, over real HTTP against `agentdb serve`: what a session token
may not destroy, tokens a platform can list, revoke and that expire, throttled wrong tokens,
input that once answered 500, and the chat demo, which runs SQL, refusing strangers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import Stack, Tenant, open_tenant, run_sql

NEEDS_USER = "user or admin token"


def problem(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    body = answer.json()
    assert isinstance(body, dict)
    return body


def test_a_session_token_cannot_destroy_its_session_checkpoints_or_add_ons(stack: Stack) -> None:
    tenant = open_tenant(stack, "wrecker@example.com")
    sid = tenant.session_id
    assert run_sql(stack, tenant, "create table kept (v int); insert into kept values (1)")
    with stack.client(tenant.user_token) as user:
        assert user.post(f"/v1/sessions/{sid}/auth", json={}).status_code in {200, 201}
        assert user.post(f"/v1/sessions/{sid}/data-api", json={}).status_code in {200, 201}
    with stack.client(tenant.session_token) as agent:
        made = agent.post(f"/v1/sessions/{sid}/checkpoints", json={"label": "safety net"})
        assert made.status_code == 201, made.text
        checkpoint = made.json()["id"]
        for path in (
            f"/v1/sessions/{sid}",
            f"/v1/sessions/{sid}/checkpoints/{checkpoint}",
            f"/v1/sessions/{sid}/auth/",
            f"/v1/sessions/{sid}/data-api/",
        ):
            refused = problem(agent.delete(path), 403)
            assert NEEDS_USER in str(refused["detail"]), (path, refused)
    with stack.client(tenant.user_token) as user:
        assert user.get(f"/v1/sessions/{sid}").json()["status"] == "ready"
        assert user.get(f"/v1/sessions/{sid}/checkpoints/{checkpoint}").status_code == 200
        assert user.get(f"/v1/sessions/{sid}/auth").json()["enabled"] is True
        assert user.get(f"/v1/sessions/{sid}/data-api").json()["enabled"] is True
    assert run_sql(stack, tenant, "select v from kept").json()["rows"] == [[1]]


def test_tokens_are_listed_without_secrets_expire_by_default_and_are_revoked(
    stack: Stack,
) -> None:
    tenant = open_tenant(stack, "revoker@example.com")
    sid = tenant.session_id
    with stack.client(tenant.user_token) as user:
        listed = user.get(f"/v1/sessions/{sid}/tokens")
        assert listed.status_code == 200, listed.text
        tokens = listed.json()["tokens"]
        assert len(tokens) == 1
        assert tenant.session_token not in listed.text
        expires = datetime.fromisoformat(tokens[0]["expires_at"])
        # The default expiry (24 h), never "never".
        assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
        assert run_sql(stack, tenant, "select 1").status_code == 200
        revoked = user.delete(f"/v1/tokens/{tokens[0]['id']}")
        assert revoked.status_code == 200, revoked.text
    assert run_sql(stack, tenant, "select 1").status_code == 401


def test_wrong_tokens_from_one_address_are_throttled_with_retry_after(stack: Stack) -> None:
    """From an address of its own (127.0.0.2), so the rest of the suite is not throttled."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    statuses = []
    with httpx.Client(base_url=stack.api, transport=transport, timeout=60) as stranger:
        for n in range(60):
            answer = stranger.get(
                "/v1/users", headers={"Authorization": f"Bearer adb_admin_{n:043d}"}
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) > 0
                problem(answer, 429)
                break
    assert statuses[0] == 401
    assert statuses[-1] == 429, statuses
    assert set(statuses) == {401, 429}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("branches", '{"name": "b", "ttl_seconds": 1e18}', "ttl_seconds"),
        ("branches", '{"name": "b", "ttl_seconds": true}', "ttl_seconds"),
        ("tokens", '{"ttl_seconds": true}', "ttl_seconds"),
        ("checkpoints", '{"label": "x", "metadata": {"k": "a\\u0000b"}}', "metadata"),
        (
            "checkpoints",
            '{"label": "x", "metadata": {"k": ' + "[" * 1000 + "1" + "]" * 1000 + "}}",
            "body",
        ),
    ],
)
def test_input_that_once_answered_500_is_a_4xx_naming_the_field(
    stack: Stack, attacker: Tenant, path: str, body: str, field: str
) -> None:
    sid = attacker.session_id
    with stack.client(attacker.user_token) as user:
        before = {
            name: user.get(f"/v1/sessions/{sid}/{name}").json()
            for name in ("branches", "checkpoints", "tokens")
        }
        answer = user.post(
            f"/v1/sessions/{sid}/{path}",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text
        assert field in answer.text, answer.text
        problem(answer, answer.status_code)
        after = {
            name: user.get(f"/v1/sessions/{sid}/{name}").json()
            for name in ("branches", "checkpoints", "tokens")
        }
    assert after == before


def test_a_preview_with_an_impossible_ttl_is_a_4xx(stack: Stack, attacker: Tenant) -> None:
    sid = attacker.session_id
    with stack.client(attacker.user_token) as user:
        made = user.post(f"/v1/sessions/{sid}/checkpoints", json={"label": "to preview"})
        assert made.status_code == 201, made.text
        for body in ('{"ttl_seconds": 1e18}', '{"ttl_seconds": true}'):
            answer = user.post(
                f"/v1/sessions/{sid}/checkpoints/{made.json()['id']}/preview",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert "ttl_seconds" in str(problem(answer, 400)), answer.text


def every_session(stack: Stack) -> set[str]:
    with stack.admin() as admin:
        users = admin.get("/v1/users")
        assert users.status_code == 200, users.text
        found = set()
        for user in users.json()["users"]:
            listed = admin.get("/v1/sessions", params={"user_id": user["id"]})
            assert listed.status_code == 200, listed.text
            found.update(s["id"] for s in listed.json()["sessions"])
        return found


DEMO_ROUTES = [
    ("GET", "/demo/"),
    ("POST", "/demo/chat"),
    ("GET", "/demo/panels"),
    ("POST", "/demo/session"),
    ("GET", "/demo/diff"),
    ("POST", "/demo/preview/close"),
]


def test_the_demo_refuses_strangers_and_session_tokens(stack: Stack, attacker: Tenant) -> None:
    """The suite's `agentdb serve` serves the demo (loopback, admin token configured). From an
    address of its own (127.0.0.3): failed tokens are throttled per address."""
    sessions_before = every_session(stack)
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    for token in (None, attacker.session_token, "adb_user_" + "x" * 43):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(
            base_url=stack.api, transport=transport, headers=headers, timeout=60
        ) as http:
            for method, path in DEMO_ROUTES:
                answer = http.request(method, path, data={"message": "drop table kept"})
                # A browser is sent to sign in; anything else is refused (401, 403, or 429
                # once the address has failed too often).
                assert answer.status_code in {303, 401, 403, 429}, (
                    token,
                    method,
                    path,
                    answer.text,
                )
                if answer.status_code == 303:
                    assert answer.headers["location"].startswith("/demo/sign-in")
    assert every_session(stack) == sessions_before
