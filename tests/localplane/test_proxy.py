"""The local plane's connection proxy (issue 18): Neon-shaped connection strings (Neon's role and
database names, TLS, channel binding, the endpoint in `options` or in the host name) work with
psycopg and node-postgres; wrong credentials and missing parts are refused as PostgreSQL and
Neon refuse them; cancels reach the backend; new connections ride through checkpoints and
restores instead of failing."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import psycopg
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from psycopg import errors
from support import client_for, run_node

from agentdb.localplane import LocalPlane, create_app, running
from agentdb.localplane._pooler import POOL_SIZE
from agentdb.pg import ServerInfo
from agentdb.settings import Settings

from .helpers import create_project, execute, fetch, physical, restore, snapshot, wait_ops


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxied(
    pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Litestar]:
    data_dir = tmp_path_factory.mktemp("proxied")
    app = create_app(Settings(data_dir=data_dir, localplane_proxy=True), server=pg_server)
    async with running(app):
        yield app
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def api(proxied: Litestar, neon_spec: NeonSpec) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(proxied, neon_spec) as client:
        yield client


def _plane(app: Litestar) -> LocalPlane:
    plane: LocalPlane = app.state.plane
    return plane


def _with(uri: str, **changes: str) -> str:
    """`uri` with its user, password or query changed."""
    parts = urlsplit(uri)
    user = changes.pop("user", parts.username or "")
    password = changes.pop("password", parts.password or "")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    query = {k: v for k, v in query.items() if v}
    encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}?{encoded}"


async def _refusal(uri: str) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(uri)
    return caught.value


async def test_the_connection_string_is_neon_shaped_and_connects_over_tls(
    api: httpx.AsyncClient, proxied: Litestar
) -> None:
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    endpoint = created["endpoints"][0]["id"]
    parts = urlsplit(uri)
    assert (parts.username, parts.path) == ("neondb_owner", "/neondb")
    assert parse_qs(parts.query) == {
        "sslmode": ["require"],
        "channel_binding": ["require"],
        "options": [f"endpoint={endpoint}"],
    }
    assert (parts.hostname, parts.port) == _plane(proxied).proxy_address
    # connection_uri answers the same string.
    asked = await api.get(
        f"/projects/{created['project']['id']}/connection_uri",
        params={"database_name": "neondb", "role_name": "neondb_owner"},
    )
    assert asked.json()["uri"] == uri

    # channel_binding=require fails unless the server authenticated with SCRAM-SHA-256-PLUS.
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        await conn.execute("CREATE TABLE t (n int)")
        await conn.execute("INSERT INTO t VALUES (1), (2)")
        cur = await conn.execute("SELECT sum(n), current_setting('application_name') FROM t")
        assert await cur.fetchone() == (3, "")
    # Startup parameters reach the server; the endpoint option does not.
    named = _with(uri, application_name="agent-app", options=f"endpoint={endpoint} -c work_mem=8MB")
    async with await psycopg.AsyncConnection.connect(named) as conn:
        cur = await conn.execute(
            "SELECT current_setting('application_name'), current_setting('work_mem')"
        )
        assert await cur.fetchone() == ("agent-app", "8MB")


async def test_verify_full_with_the_plane_ca_and_the_endpoint_in_the_host_name(
    api: httpx.AsyncClient, proxied: Litestar
) -> None:
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    endpoint = created["endpoints"][0]["id"]
    plane = _plane(proxied)
    assert plane.tls_files is not None
    ca = str(plane.tls_files.ca_cert)
    # The CA verifies the proxy's certificate for its address...
    async with await psycopg.AsyncConnection.connect(
        _with(uri, sslmode="verify-full", sslrootcert=ca)
    ) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    # ...and for an endpoint host name, which routes by SNI with no options at all, as Neon's
    # ep-....neon.tech names do (hostaddr stands in for DNS).
    host, port = plane.proxy_address or ("", 0)
    password = urlsplit(uri).password
    by_name = (
        f"postgresql://neondb_owner:{password}@{endpoint}-pooler.localhost:{port}/neondb"
        f"?sslmode=verify-full&sslrootcert={quote(ca, safe='')}&hostaddr={host}"
    )
    async with await psycopg.AsyncConnection.connect(by_name) as conn:
        assert await (await conn.execute("SELECT 2")).fetchone() == (2,)
    # Without the CA, verification fails: the certificate is the plane's own.
    refused = await _refusal(_with(uri, sslmode="verify-full", sslrootcert=""))
    assert "certificate" in str(refused) or "root" in str(refused)


async def test_wrong_or_missing_parts_are_refused_as_postgres_and_neon_refuse_them(
    api: httpx.AsyncClient,
) -> None:
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    wrong_password = await _refusal(_with(uri, password="not-the-password"))
    assert 'password authentication failed for user "neondb_owner"' in str(wrong_password)
    # An unknown role fails the same way: the proxy does not tell which roles exist.
    unknown_role = await _refusal(_with(uri, user="nobody"))
    assert 'password authentication failed for user "nobody"' in str(unknown_role)
    assert "endpoint" in str(await _refusal(_with(uri, options="")))
    unknown_endpoint = await _refusal(_with(uri, options="endpoint=ep-nothing-here-000000"))
    assert "could not be found" in str(unknown_endpoint)
    insecure = await _refusal(_with(uri, sslmode="disable", channel_binding=""))
    assert "sslmode=require" in str(insecure)
    # The database is checked after authentication, as PostgreSQL does.
    base, _, query = uri.partition("?")
    no_database = await _refusal(f"{base.rsplit('/', 1)[0]}/otherdb?{query}")
    assert 'database "otherdb" does not exist' in str(no_database)
    # A client that will not bind the channel still authenticates; one that must, does.
    async with await psycopg.AsyncConnection.connect(_with(uri, channel_binding="disable")):
        pass


async def test_a_cancel_sent_to_the_proxy_reaches_the_backend(api: httpx.AsyncClient) -> None:
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri) as conn:

        async def cancel_soon() -> None:
            await asyncio.sleep(0.3)
            await conn.cancel_safe()

        canceller = asyncio.create_task(cancel_soon())
        with pytest.raises(errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(60)")
        await canceller


async def test_new_connections_ride_through_checkpoints_and_restores(
    api: httpx.AsyncClient,
) -> None:
    """While snapshots copy the live database and restores swap another in, a client opening a
    new connection for every query is held, not refused, and each restore's data is what the
    next connection sees."""
    created = await create_project(api)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (0)")
    failures: list[str] = []
    seen: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                rows = await fetch(uri, "SELECT count(*) FROM t")
                seen.append(int(rows[0][0]))
            except psycopg.Error as error:
                failures.append(f"{type(error).__name__}: {error}")

    running_client = asyncio.create_task(client())
    snapshots: list[tuple[str, int]] = []
    for n in range(1, 4):
        await execute(uri, f"INSERT INTO t VALUES ({n})")
        snapshots.append(((await snapshot(api, project_id, branch_id))["id"], n + 1))
    for snapshot_id, rows in [*snapshots, *reversed(snapshots)]:
        branch_id = await restore(api, project_id, snapshot_id, branch_id)
        assert await fetch(uri, "SELECT count(*) FROM t") == [(rows,)]
    stop.set()
    await running_client
    # No connection was refused: each waited out the switch. A query already running on a
    # connection when a switch began ends as PostgreSQL ends it (unpooled, as the issue says);
    # at most one per switch.
    assert all(f.startswith("AdminShutdown") for f in failures), failures
    assert len(failures) <= 9  # 3 snapshots and 6 restores
    assert len(seen) > 20  # the client was connecting all along


async def test_a_read_only_endpoint_is_read_only_at_the_proxy(api: httpx.AsyncClient) -> None:
    created = await create_project(api)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int)")
    made = await api.post(
        f"/projects/{project_id}/endpoints",
        json={"endpoint": {"branch_id": branch_id, "type": "read_only"}},
    )
    assert made.status_code == 201, made.text
    await wait_ops(api, project_id, made.json()["operations"])
    replica = made.json()["endpoint"]["id"]
    asked = await api.get(
        f"/projects/{project_id}/connection_uri",
        params={"database_name": "neondb", "role_name": "neondb_owner", "endpoint_id": replica},
    )
    replica_uri = asked.json()["uri"]
    assert f"endpoint={replica}" in parse_qs(urlsplit(replica_uri).query)["options"][0]
    assert await fetch(replica_uri, "SELECT count(*) FROM t") == [(0,)]
    with pytest.raises(errors.ReadOnlySqlTransaction):
        await execute(replica_uri, "INSERT INTO t VALUES (1)")


@pytest.mark.parametrize("pooled", [False, True], ids=["unpooled", "pooled"])
async def test_node_postgres_connects_with_channel_binding(
    api: httpx.AsyncClient, proxied: Litestar, pooled: bool
) -> None:
    """node-postgres (`pg`), as an app an agent generates would use it: the connection string
    as given (pooled or not), the plane's CA trusted through NODE_EXTRA_CA_CERTS,
    SCRAM-SHA-256-PLUS, a parameterized query (the extended protocol)."""
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    if pooled:
        uri = await _pooled_uri(api, created["project"]["id"])
    plane = _plane(proxied)
    assert plane.tls_files is not None
    script = """
import pg from 'pg';
const client = new pg.Client({connectionString: process.env.DATABASE_URL,
                              enableChannelBinding: true});
await client.connect();
await client.query('CREATE TABLE IF NOT EXISTS notes (body text)');
await client.query('INSERT INTO notes VALUES ($1)', ['from node']);
const rows = (await client.query('SELECT body, current_user AS who FROM notes')).rows;
const ssl = client.connection.stream.encrypted === true;
await client.end();
console.log(JSON.stringify({rows, ssl}));
"""
    env = {"DATABASE_URL": uri, "NODE_EXTRA_CA_CERTS": str(plane.tls_files.ca_cert)}
    result: dict[str, Any] = await asyncio.to_thread(run_node, script, env=env)
    assert result["ssl"] is True
    assert [row["body"] for row in result["rows"]] == ["from node"]
    assert await fetch(uri, "SELECT body FROM notes") == [("from node",)]
    # The role behind Neon's name is the project's own (roles are cluster-wide locally).
    assert result["rows"][0]["who"].startswith("neondb_owner_")


SERVERLESS = """
import { neon, neonConfig, Pool } from '@neondatabase/serverless';
import ws from 'ws';
// The driver's documented settings for an endpoint that is not on neon.tech: the local
// plane's proxy serves HTTPS /sql and the WebSocket on its one port.
neonConfig.webSocketConstructor = ws;
neonConfig.fetchEndpoint = (host, port) => `https://${host}:${port}/sql`;
neonConfig.wsProxy = (host, port) => `${host}:${port}/v2`;
const sql = neon(process.env.DATABASE_URL);
const one = await sql`SELECT ${41}::int + 1 AS answer, ${'x'}::text AS t, NULL::int AS nothing`;
await sql.query('CREATE TABLE items (id serial PRIMARY KEY, name text, tags text[], meta jsonb)');
const [inserted, counted] = await sql.transaction([
  sql`INSERT INTO items (name, tags, meta) VALUES (${'a'}, ${['x', 'y']}, ${{k: 1}}) RETURNING id`,
  sql`SELECT count(*)::int AS n FROM items`,
], {isolationLevel: 'Serializable'});
let missing;
try { await sql`SELECT * FROM no_such_table`; }
catch (e) { missing = {code: e.code, message: e.message}; }
let rolledBack;
try {
  await sql.transaction([sql`INSERT INTO items (name) VALUES ('b')`, sql`SELECT 1/0`]);
} catch (e) { rolledBack = e.code; }
const pool = new Pool({connectionString: process.env.DATABASE_URL});
const client = await pool.connect();
await client.query('BEGIN');
await client.query('INSERT INTO items (name) VALUES ($1)', ['over websocket']);
await client.query('COMMIT');
client.release();
const viaSocket = (await pool.query('SELECT name, tags, meta FROM items ORDER BY id')).rows;
await pool.end();
console.log(JSON.stringify({one, inserted, counted, missing, rolledBack, viaSocket}));
"""


async def test_the_serverless_driver_runs_over_http_and_websocket(
    api: httpx.AsyncClient, proxied: Litestar
) -> None:
    """@neondatabase/serverless with its documented settings for a local endpoint: `neon()`
    queries and a transaction over HTTPS `/sql`, a `Pool` over the WebSocket."""
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    plane = _plane(proxied)
    assert plane.tls_files is not None
    env = {"DATABASE_URL": uri, "NODE_EXTRA_CA_CERTS": str(plane.tls_files.ca_cert)}
    result: dict[str, Any] = await asyncio.to_thread(run_node, SERVERLESS, env=env)
    assert result["one"] == [{"answer": 42, "t": "x", "nothing": None}]
    assert result["inserted"] == [{"id": 1}]
    assert result["counted"] == [{"n": 1}]
    assert result["missing"]["code"] == "42P01"
    assert 'relation "no_such_table" does not exist' in result["missing"]["message"]
    assert result["rolledBack"] == "22012"  # division by zero; the insert before it is undone
    assert result["viaSocket"] == [
        {"name": "a", "tags": ["x", "y"], "meta": {"k": 1}},
        {"name": "over websocket", "tags": None, "meta": None},
    ]


async def test_sql_over_http_answers_bad_input_with_400(
    api: httpx.AsyncClient, proxied: Litestar
) -> None:
    created = await create_project(api)
    uri = created["connection_uris"][0]["connection_uri"]
    plane = _plane(proxied)
    assert plane.tls_files is not None
    assert plane.proxy_address is not None
    host, port = plane.proxy_address
    async with httpx.AsyncClient(
        base_url=f"https://{host}:{port}",
        verify=ssl.create_default_context(cafile=plane.tls_files.ca_cert),
    ) as http:
        headers = {"Neon-Connection-String": uri}
        ok = await http.post(
            "/sql", json={"query": "SELECT $1::int AS n", "params": [7]}, headers=headers
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["rows"] == [{"n": "7"}]  # without Neon-Array-Mode: objects, raw text
        assert ok.json()["fields"][0]["dataTypeID"] == 23
        assert ok.headers["access-control-allow-origin"] == "*"
        cases = [
            ({}, {"query": "SELECT 1"}, "Neon-Connection-String"),
            (headers, {"sql": "SELECT 1"}, "query"),
            (headers, {"query": "SELECT 1", "params": "x"}, "params"),
            (headers, {"queries": []}, "queries"),
            (
                {"Neon-Connection-String": _with(uri, password="wrong")},
                {"query": "SELECT 1"},
                "password",
            ),
            ({"Neon-Connection-String": _with(uri, options="")}, {"query": "SELECT 1"}, "endpoint"),
            (
                {**headers, "Neon-Batch-Isolation-Level": "Chaotic"},
                {"queries": [{"query": "SELECT 1"}]},
                "Neon-Batch-Isolation-Level",
            ),
        ]
        for given, body, named in cases:
            refused = await http.post("/sql", json=body, headers=given)
            assert refused.status_code == 400, (body, refused.text)
            assert named in refused.json()["message"], refused.json()
        not_json = await http.post("/sql", content=b"{", headers=headers)
        assert not_json.status_code == 400
        assert (await http.get("/elsewhere")).status_code == 404
        preflight = await http.options("/sql")
        assert preflight.status_code == 200
        assert "Neon-Connection-String" in preflight.headers["access-control-allow-headers"]


async def test_the_cli_prints_the_ca_that_verifies_the_proxy(
    proxied: Litestar, tmp_path: Path
) -> None:
    plane = _plane(proxied)
    assert plane.tls_files is not None
    data_dir = plane.tls_files.ca_cert.parent.parent
    agentdb = Path(sys.executable).with_name("agentdb")
    shown = await asyncio.to_thread(
        subprocess.run,
        [str(agentdb), "localplane", "ca", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(plane.tls_files.ca_cert)
    # A data directory that cannot hold one: one line, non-zero.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    refused = await asyncio.to_thread(
        subprocess.run,
        [str(agentdb), "localplane", "ca", "--data-dir", str(blocker)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "a-file" in refused.stderr


async def _pooled_uri(api: httpx.AsyncClient, project_id: str) -> str:
    asked = await api.get(
        f"/projects/{project_id}/connection_uri",
        params={"database_name": "neondb", "role_name": "neondb_owner", "pooled": "true"},
    )
    assert asked.status_code == 200, asked.text
    uri: str = asked.json()["uri"]
    return uri


async def test_pooled_clients_share_a_few_server_connections_and_keep_prepared_statements(
    api: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    created = await create_project(api)
    project_id = created["project"]["id"]
    pooled = await _pooled_uri(api, project_id)
    assert "-pooler" in parse_qs(urlsplit(pooled).query)["options"][0]
    await execute(pooled, "CREATE TABLE t (n int)")
    role, _ = await physical(created["connection_uris"][0]["connection_uri"])
    # 20 clients, each preparing its statements on the server (psycopg's named statements):
    # they run on at most POOL_SIZE server connections, and every statement works though the
    # server under it changes from one transaction to the next.
    clients = [
        await psycopg.AsyncConnection.connect(pooled, prepare_threshold=0) for _ in range(20)
    ]
    try:
        for round_ in range(3):
            for number, conn in enumerate(clients):
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (%s)", (number,))
                    cur = await conn.execute("SELECT count(*) FROM t WHERE n = %s", (number,))
                    assert await cur.fetchone() == (round_ + 1,)
        backends = await fetch(
            pg_server.conninfo(),
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        assert backends[0][0] <= POOL_SIZE
    finally:
        for conn in clients:
            await conn.close()
    assert await fetch(pooled, "SELECT count(*) FROM t") == [(60,)]


async def test_a_pooled_client_rides_through_checkpoints_and_restores(
    api: httpx.AsyncClient,
) -> None:
    """A pooled client loops transactions through 10 checkpoints and 10 restores: no query
    fails, and after each restore it reads that restore's data."""
    created = await create_project(api)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    pooled = await _pooled_uri(api, project_id)
    await execute(pooled, "CREATE TABLE t (n int)")
    failures: list[str] = []
    seen: list[int] = []
    stop = asyncio.Event()

    async def loop() -> None:
        async with await psycopg.AsyncConnection.connect(pooled) as conn:
            while not stop.is_set():
                try:
                    async with conn.transaction():
                        cur = await conn.execute("SELECT count(*) FROM t")
                        row = await cur.fetchone()
                        assert row is not None
                        seen.append(int(row[0]))
                except psycopg.Error as error:
                    failures.append(f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.002)

    looping = asyncio.create_task(loop())
    snapshots: list[tuple[str, int]] = []
    for n in range(1, 11):
        await execute(pooled, f"INSERT INTO t VALUES ({n})")
        snapshots.append(((await snapshot(api, project_id, branch_id))["id"], n))
    for snapshot_id, rows in reversed(snapshots):
        branch_id = await restore(api, project_id, snapshot_id, branch_id)
        assert await fetch(pooled, "SELECT count(*) FROM t") == [(rows,)]
    stop.set()
    await looping
    assert failures == []
    assert len(seen) > 50
    assert seen[-1] == 1  # the last restore's data
