"""Branches: data and schema-only copies, paging, rename, delete, reset from parent, default."""

from __future__ import annotations

import httpx

from .helpers import create_project, execute, fetch, wait_ops


async def _project_with_rows(neon_http: httpx.AsyncClient) -> tuple[str, str, str]:
    created = await create_project(neon_http)
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    await execute(uri, "INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    return created["project"]["id"], created["branch"]["id"], uri


async def _branch(neon_http: httpx.AsyncClient, project_id: str, **body: object) -> dict:
    resp = await neon_http.post(f"/projects/{project_id}/branches", json=body)
    assert resp.status_code == 201, resp.text
    created: dict = resp.json()
    await wait_ops(neon_http, project_id, created["operations"])
    return created


async def test_child_branch_copies_data_and_is_independent(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, main_uri = await _project_with_rows(neon_http)
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "dev", "parent_id": main_id},
        endpoints=[{"type": "read_write"}],
    )
    assert child["branch"]["parent_id"] == main_id
    child_uri = child["connection_uris"][0]["connection_uri"]
    assert child_uri != main_uri
    assert await fetch(child_uri, "SELECT count(*) FROM notes") == [(2,)]
    await execute(child_uri, "INSERT INTO notes VALUES (3, 'three')")
    assert await fetch(main_uri, "SELECT count(*) FROM notes") == [(2,)]
    got = (await neon_http.get(f"/projects/{project_id}/branches/{child['branch']['id']}")).json()
    assert got["branch"]["current_state"] == "ready"
    assert got["annotation"]["object"]["id"] == child["branch"]["id"]


async def test_schema_only_branch_has_tables_but_no_rows(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "empty", "parent_id": main_id, "init_source": "schema-only"},
        endpoints=[{"type": "read_write"}],
    )
    assert "parent_id" not in child["branch"]  # a new root branch, as on Neon
    uri = child["connection_uris"][0]["connection_uri"]
    assert await fetch(uri, "SELECT count(*) FROM notes") == [(0,)]


# A function the restore itself would run (CREATE INDEX folds an immutable call with constant
# arguments), writing down who is logged in: the restore must be the tenant's own role.
RESTORE_WITNESS = """
CREATE TABLE witness (who text, acting text);
CREATE FUNCTION note_who() RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN INSERT INTO public.witness VALUES (session_user, current_user); RETURN 1; END $$;
CREATE FUNCTION folded(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
  $$ BEGIN RETURN $1 + public.note_who(); END $$;
CREATE TABLE trapped (n int);
CREATE INDEX trapped_idx ON trapped ((n + public.folded(1)));
DELETE FROM witness;
"""


async def test_a_schema_only_copy_runs_as_the_tenants_role_and_leaves_the_plane_schemas(
    neon_http: httpx.AsyncClient,
) -> None:
    project_id, main_id, uri = await _project_with_rows(neon_http)
    await execute(uri, RESTORE_WITNESS)
    await execute(uri, "CREATE SCHEMA auth; CREATE TABLE auth.mine (n int)")
    owner = (await fetch(uri, "SELECT current_user"))[0][0]
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "empty", "parent_id": main_id, "init_source": "schema-only"},
        endpoints=[{"type": "read_write"}],
    )
    copy = child["connection_uris"][0]["connection_uri"]
    # Whatever the restore ran, it ran logged in as the tenant's role, never a superuser.
    assert await fetch(copy, "SELECT DISTINCT who, acting FROM witness") == [(owner, owner)]
    owners = await fetch(
        copy,
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
    )
    assert owners == [(owner,)]
    # The plane's schema names are left out of the copy (set up per branch when enabled).
    assert await fetch(copy, "SELECT to_regclass('auth.mine') IS NULL") == [(True,)]
    assert await fetch(copy, "SELECT count(*) FROM notes") == [(0,)]


async def test_point_in_time_branching_names_snapshots_instead(
    neon_http: httpx.AsyncClient,
) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    resp = await neon_http.post(
        f"/projects/{project_id}/branches",
        json={"branch": {"parent_id": main_id, "parent_timestamp": "2026-01-01T00:00:00Z"}},
    )
    assert resp.status_code == 400
    assert "snapshot" in resp.json()["message"]
    listed = (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    assert len(listed) == 1


async def test_list_pages_with_next_cursor_and_counts(neon_http: httpx.AsyncClient) -> None:
    project_id, _, _ = await _project_with_rows(neon_http)
    for name in ("b1", "b2", "b3"):
        await _branch(neon_http, project_id, branch={"name": name})
    names: list[str] = []
    params = {"limit": "2", "sort_by": "name", "sort_order": "asc"}
    while True:
        page = (await neon_http.get(f"/projects/{project_id}/branches", params=params)).json()
        names += [b["name"] for b in page["branches"]]
        if "next" not in page["pagination"]:
            break
        params = {**params, "cursor": page["pagination"]["next"]}
    assert names == ["b1", "b2", "b3", "main"]
    count = (await neon_http.get(f"/projects/{project_id}/branches/count")).json()
    assert count == {"count": 4}


async def test_rename_protect_and_delete(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    child = await _branch(neon_http, project_id, branch={"name": "tmp"})
    child_id = child["branch"]["id"]
    renamed = await neon_http.patch(
        f"/projects/{project_id}/branches/{child_id}",
        json={"branch": {"name": "feature", "protected": True}},
    )
    assert renamed.json()["branch"]["name"] == "feature"
    taken = await neon_http.patch(
        f"/projects/{project_id}/branches/{child_id}", json={"branch": {"name": "main"}}
    )
    assert taken.status_code == 409
    refused = await neon_http.delete(f"/projects/{project_id}/branches/{child_id}")
    assert refused.status_code == 400
    assert "protected" in refused.json()["message"]
    await neon_http.patch(
        f"/projects/{project_id}/branches/{child_id}", json={"branch": {"protected": False}}
    )
    deleted = await neon_http.delete(f"/projects/{project_id}/branches/{child_id}")
    assert deleted.status_code == 200, deleted.text
    await wait_ops(neon_http, project_id, deleted.json()["operations"])
    assert (await neon_http.get(f"/projects/{project_id}/branches/{child_id}")).status_code == 404
    default = await neon_http.delete(f"/projects/{project_id}/branches/{main_id}")
    assert default.status_code == 400
    assert "default" in default.json()["message"]


async def test_branch_with_children_cannot_be_deleted(neon_http: httpx.AsyncClient) -> None:
    project_id, _, _ = await _project_with_rows(neon_http)
    parent = await _branch(neon_http, project_id, branch={"name": "parent"})
    await _branch(
        neon_http, project_id, branch={"name": "kid", "parent_id": parent["branch"]["id"]}
    )
    resp = await neon_http.delete(f"/projects/{project_id}/branches/{parent['branch']['id']}")
    assert resp.status_code == 400
    assert "child" in resp.json()["message"]


async def test_reset_from_parent_restores_parent_head(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, main_uri = await _project_with_rows(neon_http)
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "dev", "parent_id": main_id},
        endpoints=[{"type": "read_write"}],
    )
    child_id = child["branch"]["id"]
    child_uri = child["connection_uris"][0]["connection_uri"]
    await execute(child_uri, "DELETE FROM notes")
    await execute(main_uri, "INSERT INTO notes VALUES (9, 'nine')")
    reset = await neon_http.post(
        f"/projects/{project_id}/branches/{child_id}/restore", json={"source_branch_id": main_id}
    )
    assert reset.status_code == 200, reset.text
    await wait_ops(neon_http, project_id, reset.json()["operations"])
    # Same connection string, parent's current rows.
    assert await fetch(child_uri, "SELECT id FROM notes ORDER BY id") == [(1,), (2,), (9,)]


async def test_reset_can_preserve_the_previous_state(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "dev", "parent_id": main_id},
        endpoints=[{"type": "read_write"}],
    )
    child_uri = child["connection_uris"][0]["connection_uri"]
    await execute(child_uri, "INSERT INTO notes VALUES (5, 'mine')")
    reset = await neon_http.post(
        f"/projects/{project_id}/branches/{child['branch']['id']}/restore",
        json={"source_branch_id": main_id, "preserve_under_name": "dev-before-reset"},
    )
    await wait_ops(neon_http, project_id, reset.json()["operations"])
    branches = (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    kept = next(b for b in branches if b["name"] == "dev-before-reset")
    with_endpoint = await neon_http.post(
        f"/projects/{project_id}/branches",
        json={
            "branch": {"parent_id": kept["id"], "name": "look"},
            "endpoints": [{"type": "read_write"}],
        },
    )
    await wait_ops(neon_http, project_id, with_endpoint.json()["operations"])
    look_uri = with_endpoint.json()["connection_uris"][0]["connection_uri"]
    assert await fetch(look_uri, "SELECT id FROM notes ORDER BY id") == [(1,), (2,), (5,)]
    assert await fetch(child_uri, "SELECT id FROM notes ORDER BY id") == [(1,), (2,)]


async def test_restore_to_own_past_is_refused_clearly(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    resp = await neon_http.post(
        f"/projects/{project_id}/branches/{main_id}/restore",
        json={
            "source_branch_id": main_id,
            "source_timestamp": "2026-01-01T00:00:00Z",
            "preserve_under_name": "x",
        },
    )
    assert resp.status_code == 400
    assert "snapshot" in resp.json()["message"]


async def test_set_as_default(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    child = await _branch(neon_http, project_id, branch={"name": "next"})
    resp = await neon_http.post(
        f"/projects/{project_id}/branches/{child['branch']['id']}/set_as_default"
    )
    assert resp.status_code == 200
    assert resp.json()["branch"]["default"] is True
    main = (await neon_http.get(f"/projects/{project_id}/branches/{main_id}")).json()["branch"]
    assert main["default"] is False


async def test_compare_schema_shows_a_unified_diff(neon_http: httpx.AsyncClient) -> None:
    project_id, main_id, _ = await _project_with_rows(neon_http)
    child = await _branch(
        neon_http,
        project_id,
        branch={"name": "dev", "parent_id": main_id},
        endpoints=[{"type": "read_write"}],
    )
    uri = child["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE tags (name text)", "ALTER TABLE notes ADD COLUMN done bool")
    resp = await neon_http.get(
        f"/projects/{project_id}/branches/{child['branch']['id']}/compare_schema",
        params={"base_branch_id": main_id, "db_name": "neondb"},
    )
    assert resp.status_code == 200, resp.text
    diff = resp.json()["diff"]
    assert diff.startswith("--- main/neondb\n+++ dev/neondb\n")
    assert "+CREATE TABLE public.tags (" in diff
    assert "+    done boolean" in diff
    same = await neon_http.get(
        f"/projects/{project_id}/branches/{main_id}/compare_schema",
        params={"base_branch_id": main_id, "db_name": "neondb"},
    )
    assert same.json()["diff"] == ""
    missing = await neon_http.get(
        f"/projects/{project_id}/branches/{main_id}/compare_schema", params={"db_name": "neondb"}
    )
    assert missing.status_code == 400
    assert "base_branch_id" in missing.json()["message"]


async def test_annotations_are_stored_listed_and_follow_a_finalized_restore(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(neon_http, branch={"annotations": {"agentdb-session": "s-1"}})
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    got = (await neon_http.get(f"/projects/{project_id}/branches/{main_id}")).json()
    assert got["annotation"]["value"] == {"agentdb-session": "s-1"}
    child = await _branch(
        neon_http, project_id, branch={"name": "dev"}, annotation_value={"purpose": "preview"}
    )
    listed = (await neon_http.get(f"/projects/{project_id}/branches")).json()
    assert listed["annotations"][child["branch"]["id"]]["value"] == {"purpose": "preview"}
    snap = await neon_http.post(f"/projects/{project_id}/branches/{main_id}/snapshot")
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    restored = await neon_http.post(
        f"/projects/{project_id}/snapshots/{snap.json()['snapshot']['id']}/restore",
        json={"target_branch_id": main_id, "finalize_restore": True},
    )
    await wait_ops(neon_http, project_id, restored.json()["operations"])
    live_id = restored.json()["branch"]["id"]
    live = (await neon_http.get(f"/projects/{project_id}/branches/{live_id}")).json()
    assert live["annotation"]["value"] == {"agentdb-session": "s-1"}
    old = (await neon_http.get(f"/projects/{project_id}/branches/{main_id}")).json()
    assert old["annotation"]["value"] == {}
