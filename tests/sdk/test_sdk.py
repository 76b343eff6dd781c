"""One suite, both modes: the SDK embedded (`AgentDB.local`, agentdb in this process on its own
embedded PostgreSQL) and remote (`AgentDB.connect` to a served `agentdb serve` over real HTTP)
must behave the same, results and errors alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
import pytest_asyncio
from support import API_LINE, clean_env, serving

from agentdb.sdk import (
    AgentDB,
    AuthError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    SqlError,
    TooManyRequestsError,
)
from agentdb.sdk._errors import error_from
from agentdb.settings import Settings

ADMIN_TOKEN = "adb_admin_sdk-suite-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("sdk-remote") / "data"
    env = clean_env(AGENTDB_ADMIN_TOKEN=ADMIN_TOKEN)
    with serving(env, data_dir, ("serve",), API_LINE) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["embedded", "remote"])
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AgentDB]:
    if request.param == "embedded":
        settings = Settings(data_dir=tmp_path_factory.mktemp("sdk-embedded"))
        client = AgentDB.local(settings=settings)
    else:
        client = AgentDB.connect(request.getfixturevalue("served"), ADMIN_TOKEN)
    async with client:
        yield client


async def new_session(db: AgentDB) -> tuple[str, str]:
    user = await db.create_user(f"{uuid.uuid4().hex[:10]}@example.com")
    session = await db.create_session(user_id=user.id, name="sdk")
    return str(user.id), str(session.id)


async def test_session_sql_checkpoint_restore(db: AgentDB):
    user_id, sid = await new_session(db)
    session = await db.get_session(sid)
    assert session.status == "ready"
    assert str(session.user_id) == user_id
    assert session.connection_uri
    created = await db.sql(sid, "CREATE TABLE t (n int, tag text); INSERT INTO t VALUES (1, 'a')")
    assert created.command == "INSERT 0 1"
    one = await db.create_checkpoint(sid, label="one", metadata={"commit": "abc123"})
    assert one.metadata == {"commit": "abc123"}
    await db.sql(sid, "INSERT INTO t VALUES ($1, $2)", [2, "b"])
    two = await db.create_checkpoint(sid, label="two")
    assert two.parent_id == one.id

    restored = await db.restore_checkpoint(sid, one.id)
    assert restored.head_checkpoint_id == one.id
    assert restored.connection_uri == session.connection_uri
    result = await db.sql(sid, "SELECT n, tag FROM t ORDER BY n")
    assert result.rows == [[1, "a"]]
    assert [c.name for c in result.columns] == ["n", "tag"]
    async with await psycopg.AsyncConnection.connect(session.connection_uri) as conn:
        cursor = await conn.execute("SELECT count(*) FROM t")
        assert await cursor.fetchone() == (1,)

    tree = await db.list_checkpoints(sid)
    assert tree.head_id == one.id
    assert {c.id for c in tree.checkpoints} >= {one.id, two.id}  # "two" stays restorable
    await db.restore_checkpoint(sid, two.id)
    assert (await db.sql(sid, "SELECT count(*) FROM t")).rows == [[2]]
    assert (await db.get_checkpoint(sid, two.id)).label == "two"
    assert (await db.pin_checkpoint(sid, two.id)).pinned is True
    assert (await db.pin_checkpoint(sid, two.id, pinned=False)).pinned is False
    actions = [e.action for e in await db.list_events(sid, limit=500)]
    assert actions.count("checkpoint.restore") >= 2


async def test_preview_branch_diff_and_delete(db: AgentDB):
    _, sid = await new_session(db)
    await db.sql(sid, "CREATE TABLE items (n int); INSERT INTO items VALUES (1)")
    checkpoint = await db.create_checkpoint(sid)
    await db.sql(sid, "CREATE TABLE extra (x int); INSERT INTO items VALUES (2)")

    preview = await db.preview_checkpoint(sid, checkpoint.id, ttl_seconds=300)
    assert preview.kind == "preview"
    assert preview.connection_uri
    async with await psycopg.AsyncConnection.connect(preview.connection_uri) as conn:
        cursor = await conn.execute("SELECT count(*) FROM items")
        assert await cursor.fetchone() == (1,)

    diff = await db.diff_checkpoints(sid, checkpoint.id)
    changes = {t.name: t.change for t in diff.tables}
    assert changes["public.extra"] == "added"
    assert changes["public.items"] == "changed"

    branch = await db.create_branch(sid, name="experiment", checkpoint_id=checkpoint.id)
    assert branch.source_checkpoint_id == checkpoint.id
    reset = await db.reset_branch(sid, branch.id)
    assert reset.id == branch.id
    assert {b.id for b in await db.list_branches(sid)} == {preview.id, branch.id}
    assert (await db.delete_branch(sid, branch.id)).status == "deleted"

    gone = await db.delete_session(sid)
    assert gone.status == "deleted"
    assert gone.connection_uri is None


async def test_tokens_users_and_listing(db: AgentDB):
    user_id, sid = await new_session(db)
    token = await db.create_session_token(sid, name="agent")
    assert token.scope == "session"
    assert token.token.startswith("adb_sess_")
    user_token = await db.create_user_token(user_id)
    assert user_token.scope == "user"
    assert (await db.get_user(user_id)).email.endswith("@example.com")
    assert user_id in [str(u.id) for u in await db.list_users(limit=500)]
    assert [str(s.id) for s in await db.list_sessions(user_id=user_id)] == [sid]


async def test_tier_changes_usage_and_pins(db: AgentDB):
    user_id, sid = await new_session(db)
    usage = await db.get_session_usage(sid)
    assert (str(usage.session_id), usage.tier, usage.sessions) == (sid, "free", 1)
    assert usage.periods == []  # nothing polled yet
    change = await db.change_tier(user_id, "pro")
    assert (change.from_tier, change.to_tier, change.status) == ("free", "pro", "finished")
    assert change.sessions_total == change.sessions_updated == 1
    assert [c.id for c in await db.list_tier_changes(user_id)] == [change.id]
    assert (await db.get_user(user_id)).tier == "pro"
    assert (await db.get_user_usage(user_id)).sessions == 1
    with pytest.raises(InvalidRequestError) as bad:
        await db.change_tier(user_id, "platinum")
    assert bad.value.fields == ["tier"]
    head = (await db.get_session(sid)).head_checkpoint_id
    assert head is not None
    assert (await db.pin_checkpoint(sid, head)).pinned is True
    assert (await db.pin_checkpoint(sid, head, pinned=False)).pinned is False


async def test_errors_are_typed_and_name_the_field(db: AgentDB):
    _, sid = await new_session(db)
    with pytest.raises(InvalidRequestError) as bad:
        await db.create_user("not-an-email")
    assert bad.value.fields == ["email"]
    with pytest.raises(NotFoundError):
        await db.get_session(uuid.uuid4())
    with pytest.raises(SqlError) as failed:
        await db.sql(sid, "SELECT * FROM missing_table")
    assert failed.value.sqlstate == "42P01"
    assert "missing_table" in str(failed.value)
    head = (await db.get_session(sid)).head_checkpoint_id
    assert head is not None
    with pytest.raises(ConflictError):
        await db.delete_checkpoint(sid, head)
    with pytest.raises(InvalidRequestError) as ttl:
        await db.create_branch(sid, ttl_seconds=-1)
    assert ttl.value.fields == ["ttl_seconds"]


async def test_a_session_token_reaches_only_its_session(served: str):
    async with AgentDB.connect(served, ADMIN_TOKEN) as admin:
        _, mine = await new_session(admin)
        _, theirs = await new_session(admin)
        token = (await admin.create_session_token(mine)).token
    async with AgentDB.connect(served, token) as agent:
        assert [str(s.id) for s in await agent.list_sessions()] == [mine]
        assert (await agent.get_session(mine)).connection_uri is None
        with pytest.raises(NotFoundError):
            await agent.sql(theirs, "SELECT 1")
        with pytest.raises(AuthError):
            await agent.create_user("x@example.com")
    async with AgentDB.connect(served, "adb_user_wrong") as stranger:
        with pytest.raises(AuthError):
            await stranger.list_sessions()


def test_a_client_needs_a_token_and_a_context():
    with pytest.raises(ValueError, match="token"):
        AgentDB.connect("http://127.0.0.1:1", "")


async def test_tokens_are_listed_and_revoked(db: AgentDB):
    user_id, sid = await new_session(db)
    user_token = await db.create_user_token(user_id, name="platform")
    agent_token = await db.create_session_token(sid, name="agent")
    assert agent_token.expires_at is not None  # session tokens expire by default
    listed = await db.list_user_tokens(user_id)
    assert [t.id for t in listed] == sorted([user_token.id, agent_token.id])
    assert all(not hasattr(t, "token") for t in listed)
    assert [t.id for t in await db.list_session_tokens(sid)] == [agent_token.id]
    assert (await db.get_token(agent_token.id)).name == "agent"

    revoked = await db.revoke_token(agent_token.id)
    assert revoked.revoked_at is not None
    assert await db.list_session_tokens(sid) == []
    inactive = await db.list_session_tokens(sid, include_inactive=True)
    assert [t.id for t in inactive] == [agent_token.id]
    page = await db.list_user_tokens(user_id, include_inactive=True, limit=1)
    rest = await db.list_user_tokens(user_id, include_inactive=True, after=page[0].id)
    assert [t.id for t in page + rest] == [t.id for t in listed]


async def test_a_session_token_cannot_delete_its_session_and_a_revoked_one_nothing(served: str):
    async with AgentDB.connect(served, ADMIN_TOKEN) as admin:
        _, sid = await new_session(admin)
        token = await admin.create_session_token(sid)
    async with AgentDB.connect(served, token.token) as agent:
        with pytest.raises(AuthError) as refused:
            await agent.delete_session(sid)
        assert refused.value.status == 403
        assert "user or admin token" in str(refused.value)
        assert (await agent.get_session(sid)).status == "ready"
        # An agent may give up its own token.
        assert (await agent.revoke_token(token.id)).revoked_at is not None
        with pytest.raises(AuthError) as gone:
            await agent.get_session(sid)
        assert gone.value.status == 401


def test_a_429_is_a_too_many_requests_error_with_retry_after():
    response = httpx.Response(
        429,
        json={
            "type": "x",
            "title": "Too Many Requests",
            "status": 429,
            "detail": "wait",
            "retry_after": 17,
        },
        headers={"Retry-After": "17"},
    )
    error = error_from(response)
    assert isinstance(error, TooManyRequestsError)
    assert error.retry_after == 17


async def test_agent_context_and_code_ref_reach_the_audit_log(db: AgentDB):
    _, sid = await new_session(db)
    prompt = "Ajoute une table « tâches » 📝 " + "x" * 600
    with db.agent_context(model="claude-sonnet-4", prompt=prompt):
        with db.agent_context(tool="create_checkpoint", tool_call_id="toolu_01"):
            first = await db.create_checkpoint(sid, label="v1", code_ref="git:4f2a9c1")
        await db.sql(sid, "create table t (n int)")
    assert first.code_ref == "git:4f2a9c1"
    await db.create_checkpoint(sid, label="v2", code_ref="git:77aa001")
    restored = await db.restore_checkpoint(sid, first.id)
    assert (restored.head_checkpoint_id, restored.restored_code_ref) == (first.id, "git:4f2a9c1")
    tree = await db.list_checkpoints(sid)
    assert [c.code_ref for c in tree.checkpoints] == [None, "git:4f2a9c1", "git:77aa001"]

    events = await db.list_events(sid, limit=500)
    created = [e for e in events if e.action == "checkpoint.create" and e.agent_context]
    assert created
    for event in created:
        assert event.agent_context == {
            "tool": "create_checkpoint",
            "tool_call_id": "toolu_01",
            "model": "claude-sonnet-4",
            "prompt": prompt[:500],
        }
    (ran,) = [e for e in events if e.action == "sql.run"]
    assert ran.agent_context == {"model": "claude-sonnet-4", "prompt": prompt[:500]}
    assert all(not e.agent_context for e in events if e.action.startswith("checkpoint.restore"))


async def test_session_token_modes_and_the_current_token(served: str):
    async with AgentDB.connect(served, ADMIN_TOKEN) as admin:
        _, sid = await new_session(admin)
        reader = await admin.create_session_token(sid, name="reader", mode="read_only")
        writer = await admin.create_session_token(sid)
        listed = {t.name: t.mode for t in await admin.list_session_tokens(sid)}
        with pytest.raises(InvalidRequestError) as bad:
            await admin.create_session_token(sid, mode="everything")
    assert (reader.mode, writer.mode) == ("read_only", "read_write")
    assert listed == {"reader": "read_only", None: "read_write"}
    assert bad.value.fields == ["mode"]
    async with AgentDB.connect(served, reader.token) as agent:
        own = await agent.current_token()
        assert (own.id, own.mode, own.scope, str(own.session_id)) == (
            reader.id,
            "read_only",
            "session",
            sid,
        )
        assert (await agent.sql(sid, "select 1 as one")).rows == [[1]]
        with pytest.raises(SqlError):
            await agent.sql(sid, "create table nope (n int)")
        with pytest.raises(AuthError, match="read_only") as refused:
            await agent.create_checkpoint(sid)
        assert refused.value.status == 403
