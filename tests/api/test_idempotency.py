"""`Idempotency-Key` on POSTs: a retry gets the first answer, the work is done once, and the
stored answer (which may hold secrets) is encrypted."""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa

from agentdb.runtime import Runtime
from meta_schema import IdempotencyRecord

from .conftest import ADMIN, Tenant, assert_problem


async def test_a_retried_checkpoint_is_taken_once(http: httpx.AsyncClient, tenant: Tenant):
    path = f"/v1/sessions/{tenant.session_id}/checkpoints"
    headers = {**tenant.session_token, "Idempotency-Key": "step-7"}
    first = await http.post(path, json={"label": "step 7"}, headers=headers)
    again = await http.post(path, json={"label": "step 7"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    tree = (await http.get(path, headers=tenant.session_token)).json()
    assert [c["label"] for c in tree["checkpoints"]].count("step 7") == 1


async def test_the_same_key_with_another_body_is_refused(http: httpx.AsyncClient, tenant: Tenant):
    path = f"/v1/sessions/{tenant.session_id}/checkpoints"
    headers = {**tenant.user_token, "Idempotency-Key": "reused"}
    assert (await http.post(path, json={"label": "a"}, headers=headers)).status_code == 201
    other = await http.post(path, json={"label": "b"}, headers=headers)
    assert_problem(other, 422)
    labels = [c["label"] for c in (await http.get(path, headers=ADMIN)).json()["checkpoints"]]
    assert "b" not in labels


async def test_keys_belong_to_the_token_that_sent_them(http: httpx.AsyncClient, tenant: Tenant):
    path = f"/v1/sessions/{tenant.session_id}/checkpoints"
    one = await http.post(
        path, json={"label": "x"}, headers={**tenant.user_token, "Idempotency-Key": "k"}
    )
    two = await http.post(
        path, json={"label": "y"}, headers={**tenant.session_token, "Idempotency-Key": "k"}
    )
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"]


async def test_concurrent_retries_run_the_work_once(http: httpx.AsyncClient, tenant: Tenant):
    path = f"/v1/sessions/{tenant.session_id}/checkpoints"
    headers = {**tenant.user_token, "Idempotency-Key": "burst"}
    answers = await asyncio.gather(
        *(http.post(path, json={"label": "burst"}, headers=headers) for _ in range(4))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    for answer in answers:
        if answer.status_code == 409:
            assert answer.headers["retry-after"] == "1"
    labels = [c["label"] for c in (await http.get(path, headers=ADMIN)).json()["checkpoints"]]
    assert labels.count("burst") == 1


async def test_replayed_secrets_are_stored_encrypted(
    http: httpx.AsyncClient, tenant: Tenant, runtime: Runtime
):
    headers = {**tenant.user_token, "Idempotency-Key": "new-session"}
    created = await http.post("/v1/sessions", json={"name": "retried"}, headers=headers)
    replay = await http.post("/v1/sessions", json={"name": "retried"}, headers=headers)
    assert created.status_code == replay.status_code == 201
    assert replay.json()["id"] == created.json()["id"]
    uri = created.json()["connection_uri"]
    assert uri
    assert replay.json()["connection_uri"] == uri

    token_headers = {**tenant.user_token, "Idempotency-Key": "agent-token"}
    path = f"/v1/sessions/{created.json()['id']}/tokens"
    token = (await http.post(path, json={}, headers=token_headers)).json()["token"]
    assert (await http.post(path, json={}, headers=token_headers)).json()["token"] == token

    async with runtime.meta() as db:
        stored = (await db.scalars(sa.select(IdempotencyRecord.encrypted_response))).all()
    blob = b"".join(s for s in stored if s)
    assert blob
    assert uri.encode() not in blob
    assert token.encode() not in blob
    sessions = (await http.get("/v1/sessions", headers=tenant.user_token)).json()["sessions"]
    assert [s["name"] for s in sessions].count("retried") == 1


async def test_errors_below_500_are_replayed_too(http: httpx.AsyncClient, tenant: Tenant):
    path = f"/v1/sessions/{tenant.session_id}/sql"
    headers = {**tenant.user_token, "Idempotency-Key": "bad-sql"}
    first = await http.post(path, json={"sql": "SELECT * FROM missing"}, headers=headers)
    assert_problem(first, 422)
    again = await http.post(path, json={"sql": "SELECT * FROM missing"}, headers=headers)
    assert again.status_code == 422
    assert again.json() == first.json()
