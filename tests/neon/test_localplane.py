"""The client end to end against the in-process local control plane: every call it serves, each
request and response checked against Neon's OpenAPI document by the client's event hooks."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from agentdb.neon import (
    DefaultEndpointSettings,
    EndpointOptions,
    NeonBadRequest,
    NeonClient,
    NeonNotFound,
    ProjectQuota,
    ProjectSettings,
)


async def _select(uri: str, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = await conn.execute(query)
        return await cur.fetchall() if cur.description else []


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_project_lifecycle_and_checkpoint_loop(neon: NeonClient) -> None:
    created = await neon.create_project(
        name=_name("lifecycle"),
        database_name="app",
        role_name="app_owner",
        default_endpoint_settings=DefaultEndpointSettings(suspend_timeout_seconds=300),
        settings=ProjectSettings(quota=ProjectQuota(logical_size_bytes=10**9)),
    )
    project_id, main_id = created.project.id, created.branch.id
    assert all(op.succeeded for op in created.operations)
    assert [r.name for r in created.roles] == ["app_owner"]
    password = created.roles[0].password
    assert password is not None
    assert password.get_secret_value() not in repr(created)
    uri = created.connection_uris[0].connection_uri.get_secret_value()
    await _select(uri, "CREATE TABLE items (n int); INSERT INTO items VALUES (1), (2)")

    project = await neon.get_project(project_id)
    assert project.name == created.project.name
    renamed = await neon.update_project(project_id, name=project.name + "-renamed")
    assert renamed.project.name.endswith("-renamed")
    assert project_id in [p.id async for p in neon.iter_projects(page_size=1)]
    assert (await neon.find_project(renamed.project.name)) is not None

    first = await neon.create_snapshot(project_id, main_id, name="two rows")
    assert all(op.succeeded for op in first.operations)
    await _select(uri, "INSERT INTO items VALUES (3)")
    second = await neon.create_snapshot(project_id, main_id, name="three rows")
    assert [s.name for s in await neon.list_snapshots(project_id)] == ["two rows", "three rows"]
    renamed_snap = await neon.rename_snapshot(project_id, second.snapshot.id, "three")
    assert renamed_snap.name == "three"
    assert (await neon.find_snapshot(project_id, "three")) == renamed_snap

    # Roll back: the restored branch takes over main's name and compute; same connection string.
    restored = await neon.restore_snapshot(
        project_id, first.snapshot.id, target_branch_id=main_id, finalize_restore=True
    )
    live_id = restored.branch.id
    assert live_id != main_id
    assert await _select(uri, "SELECT n FROM items ORDER BY n") == [(1,), (2,)]
    live = await neon.get_branch(project_id, live_id)
    assert (live.name, live.restored_from, live.restored_as) == ("main", first.snapshot.id, main_id)
    assert (await neon.get_branch(project_id, main_id)).name == "main (old)"

    # Preview, then finalize it onto the new live branch.
    preview = await neon.restore_snapshot(
        project_id, second.snapshot.id, target_branch_id=live_id, name="preview"
    )
    assert preview.endpoints, "a preview gets a compute of its own"
    finalized = await neon.finalize_restore(project_id, preview.branch.id, name="before preview")
    assert all(op.succeeded for op in finalized)
    assert await _select(uri, "SELECT n FROM items ORDER BY n") == [(1,), (2,), (3,)]
    assert (await neon.find_branch(project_id, "before preview")) is not None

    assert await neon.delete_snapshot(project_id, second.snapshot.id)
    assert [s.id for s in await neon.list_snapshots(project_id)] == [first.snapshot.id]

    operations = await neon.list_operations(project_id, limit=2)
    assert len(operations.operations) == 2
    assert operations.cursor
    one = await neon.get_operation(project_id, operations.operations[0].id)
    assert one.id == operations.operations[0].id

    deleted = await neon.delete_project(project_id)
    assert deleted.id == project_id
    with pytest.raises(NeonNotFound):
        await neon.get_project(project_id)


async def test_branches_endpoints_roles_and_databases(neon: NeonClient) -> None:
    created = await neon.create_project(name=_name("compute"))
    project_id, main_id = created.project.id, created.branch.id
    owner = created.roles[0].name

    dev = await neon.create_branch(
        project_id,
        name="dev",
        endpoints=[EndpointOptions(type="read_write", autoscaling_limit_max_cu=0.25)],
    )
    assert dev.branch.parent_id == main_id
    assert [e.type for e in dev.endpoints] == ["read_write"]
    bare = await neon.create_branch(project_id)
    assert bare.endpoints == []
    names = [b.name async for b in neon.iter_branches(project_id, page_size=1)]
    assert sorted(names) == sorted(["main", "dev", bare.branch.name])
    page = await neon.list_branches(project_id, sort_by="name", sort_order="asc")
    assert [b.name for b in page.branches] == sorted(names)

    updated = await neon.update_branch(project_id, dev.branch.id, name="dev2", protected=False)
    assert updated.branch.name == "dev2"

    endpoint_id = dev.endpoints[0].id
    assert {e.id for e in await neon.list_endpoints(project_id)} >= {endpoint_id}
    assert [e.id for e in await neon.list_endpoints(project_id, branch_id=dev.branch.id)] == [
        endpoint_id
    ]
    changed = await neon.update_endpoint(project_id, endpoint_id, suspend_timeout_seconds=600)
    assert changed.endpoint.suspend_timeout_seconds == 600
    await neon.suspend_endpoint(project_id, endpoint_id)
    assert (await neon.get_endpoint(project_id, endpoint_id)).current_state == "idle"
    await neon.start_endpoint(project_id, endpoint_id)
    assert (await neon.get_endpoint(project_id, endpoint_id)).current_state == "active"

    role = await neon.create_role(project_id, main_id, "reader")
    assert role.role.password is not None
    revealed = await neon.reveal_password(project_id, main_id, "reader")
    assert revealed.get_secret_value() == role.role.password.get_secret_value()
    reset = await neon.reset_password(project_id, main_id, "reader")
    assert reset.role.password is not None
    assert reset.role.password.get_secret_value() != revealed.get_secret_value()
    assert {r.name for r in await neon.list_roles(project_id, main_id)} == {owner, "reader"}

    database = await neon.create_database(project_id, main_id, "extra", owner_name="reader")
    assert database.database.owner_name == "reader"
    assert {d.name for d in await neon.list_databases(project_id, main_id)} >= {"extra"}
    uri = await neon.connection_uri(project_id, database_name="extra", role_name="reader")
    assert await _select(uri.get_secret_value(), "SELECT 1") == [(1,)]
    await neon.delete_database(project_id, main_id, "extra")
    assert "extra" not in {d.name for d in await neon.list_databases(project_id, main_id)}

    diff = await neon.compare_schema(
        project_id, dev.branch.id, db_name="neondb", base_branch_id=main_id
    )
    assert diff == ""

    await neon.set_default_branch(project_id, dev.branch.id)
    assert (await neon.get_branch(project_id, dev.branch.id)).default
    await neon.set_default_branch(project_id, main_id)
    reset_branch = await neon.restore_branch(project_id, dev.branch.id, source_branch_id=main_id)
    assert reset_branch.branch.id == dev.branch.id

    await neon.delete_branch(project_id, bare.branch.id)
    with pytest.raises(NeonNotFound):
        await neon.get_branch(project_id, bare.branch.id)
    await neon.delete_project(project_id)


async def test_local_plane_errors_are_typed_with_code_and_request_id(neon: NeonClient) -> None:
    with pytest.raises(NeonNotFound) as caught:
        await neon.get_project("no-such-project")
    error = caught.value
    assert (error.status, error.code) == (404, "NOT_FOUND")
    assert error.message == "project no-such-project not found"
    assert error.request_id
    assert uuid.UUID(error.request_id)  # the X-Request-ID the client sent, echoed by the plane
    assert not error.maybe_applied

    created = await neon.create_project(name=_name("errors"))
    with pytest.raises(NeonBadRequest) as bad:
        await neon.create_snapshot(created.project.id, created.branch.id, lsn="0/16B3748")
    assert bad.value.status == 400
    await neon.delete_project(created.project.id)
