"""The operator commands (`agentdb users|sessions|sql|checkpoints|branches`) run as the real
command in subprocesses against one `agentdb serve` for the module: --json answers checked
against the data, the checkpoint tree as drawn, secrets shown only when asked, and bad input as
one line with exit code 2 (the command line is wrong) or 1 (the operation failed). The tests
share the server, a user and a session, and run in file order: the last one deletes the session.

Each run costs ~1.7 s of Python start-up, so independent runs go in parallel (`run_all`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support import API_LINE, RUN_TIMEOUT, agentdb, assert_one_line_error, clean_env, serving

ADMIN = "adb_admin_cli-commands-test-token-0123456789"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("cli-commands") / "data"
    with serving(clean_env(AGENTDB_ADMIN_TOKEN=ADMIN), data_dir, ("serve",), API_LINE) as served:
        yield served


@pytest.fixture(scope="module")
def admin(url: str) -> dict[str, str]:
    return clean_env(AGENTDB_URL=url, AGENTDB_TOKEN=ADMIN)


def ok(*args: str, env: dict[str, str]) -> str:
    """Runs a command that must succeed silently on stderr; its stdout."""
    result = agentdb(*args, env=env)
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return result.stdout


def doc(*args: str, env: dict[str, str]) -> Any:
    return json.loads(ok(*args, "--json", env=env))


def run_all(
    *runs: tuple[tuple[str, ...], dict[str, str]],
) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda run: agentdb(*run[0], env=run[1]), runs))


def stdout_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return result.stdout


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(stdout_of(result))


@pytest.fixture(scope="module")
def user(admin: dict[str, str]) -> dict[str, Any]:
    return doc("users", "create", "cli@example.com", "--name", "CLI", "--tier", "pro", env=admin)


@pytest.fixture(scope="module")
def session(admin: dict[str, str], user: dict[str, Any]) -> dict[str, Any]:
    return doc("sessions", "create", "--user", user["id"], "--name", "todo app", env=admin)


@pytest.fixture(scope="module")
def tokens(
    admin: dict[str, str], user: dict[str, Any], session: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """The environments of the user's platform code and of the session's agent: `users token`
    and `sessions token` print the token alone on one line."""
    envs = []
    for result in run_all(
        (("users", "token", user["id"]), admin), (("sessions", "token", session["id"]), admin)
    ):
        token = stdout_of(result)
        assert token.count("\n") == 1
        assert token.startswith("adb_")
        envs.append({**admin, "AGENTDB_TOKEN": token.strip()})
    return envs[0], envs[1]


@pytest.fixture(scope="module")
def agent(tokens: tuple[dict[str, str], dict[str, str]]) -> dict[str, str]:
    return tokens[1]


def test_users_sessions_and_tokens(
    admin: dict[str, str],
    user: dict[str, Any],
    session: dict[str, Any],
    tokens: tuple[dict[str, str], dict[str, str]],
) -> None:
    assert (user["email"], user["name"], user["tier"]) == ("cli@example.com", "CLI", "pro")
    assert session["user_id"] == user["id"]
    assert (session["name"], session["status"]) == ("todo app", "ready")
    assert session["head_checkpoint_id"] is not None  # the root checkpoint
    assert "connection_uri" not in session  # not asked for

    sid, as_user = session["id"], tokens[0]
    no_token = {k: v for k, v in admin.items() if k != "AGENTDB_TOKEN"}
    listed, table, token_doc, secret, human, mine, theirs, everyones, first = run_all(
        (("users", "ls", "--json"), admin),
        (("users", "ls"), admin),
        (("users", "token", user["id"], "--name", "ci", "--ttl", "3600", "--json"), admin),
        (("sessions", "show", sid, "--secrets", "--json"), admin),
        (("sessions", "show", sid), admin),
        # A user token reaches the user's own sessions; no --user is needed with it.
        (("sessions", "ls", "--json"), as_user),
        (("sessions", "ls", "--user", user["id"]), admin),
        # The admin's listing without --user: every user's sessions, a page at a time.
        (("sessions", "ls", "--status", "ready", "--limit", "500", "--json"), admin),
        # The connection and output options may come before the command too.
        (("--token", ADMIN, "--json", "sessions", "ls", "--user", user["id"]), no_token),
    )
    assert user["id"] in [u["id"] for u in json_of(listed)]
    assert any(
        user["id"] in line and "cli@example.com" in line for line in table.stdout.splitlines()
    )
    token = json_of(token_doc)
    assert (token["scope"], token["user_id"], token["name"]) == ("user", user["id"], "ci")
    assert token["token"].startswith(token["prefix"])
    shown = json_of(secret)
    assert shown.pop("connection_uri").startswith("postgresql://")
    assert shown == session | {"updated_at": shown["updated_at"]}
    text = stdout_of(human)
    assert sid in text
    assert "postgresql://" not in text
    assert "connection_uri" not in text
    assert [s["id"] for s in json_of(mine)] == [sid]
    assert any(line.startswith(sid) and "todo app" in line for line in theirs.stdout.splitlines())
    assert [s["id"] for s in json_of(first)] == [sid]
    ready = json_of(everyones)
    assert sid in [s["id"] for s in ready]
    assert {s["status"] for s in ready} == {"ready"}


@pytest.fixture(scope="module")
def history(agent: dict[str, str], session: dict[str, Any]) -> dict[str, Any]:
    """As the agent: two todos, checkpoint, one deleted, checkpoint, restore to the first, and
    a checkpoint after the restore (a second child of the first)."""
    sid = session["id"]
    made = doc(
        "sql",
        sid,
        "create table todo (id int primary key, title text, done bool);"
        "insert into todo values (1, 'write docs', null), (2, 'ship', true)",
        env=agent,
    )
    first = doc(
        "checkpoints",
        "create",
        sid,
        "--label",
        "two todos",
        "--message",
        "add the todo table",
        "--metadata",
        '{"step": 1}',
        env=agent,
    )
    deleted = ok("sql", sid, "delete from todo where id = $1", "--param", "1", env=agent)
    second = doc("checkpoints", "create", sid, "--label", "one todo", env=agent)
    restored = doc("checkpoints", "restore", sid, first["id"], env=agent)
    third = doc("checkpoints", "create", sid, "--label", "after the restore", env=agent)
    return {
        "third": third,
        "made": made,
        "first": first,
        "deleted": deleted,
        "second": second,
        "restored": restored,
    }


def test_sql_checkpoints_restore_and_the_tree(
    agent: dict[str, str], session: dict[str, Any], history: dict[str, Any]
) -> None:
    sid, root = session["id"], session["head_checkpoint_id"]
    first, second, third = history["first"], history["second"], history["third"]
    assert history["made"]["command"] == "INSERT 0 2"
    assert history["deleted"] == "DELETE 1\n"
    assert (first["parent_id"], first["label"], first["status"]) == (root, "two todos", "ready")
    assert (first["message"], first["metadata"]) == ("add the todo table", {"step": 1})
    assert second["parent_id"] == first["id"]
    assert history["restored"]["head_checkpoint_id"] == first["id"]
    assert "connection_uri" not in history["restored"]

    rows, tree_doc, tree, diff_doc, diff, table = run_all(
        (("sql", sid, "select id, title, done from todo order by id", "--json"), agent),
        (("checkpoints", "ls", sid, "--json"), agent),
        (("checkpoints", "ls", sid), agent),
        (("checkpoints", "diff", sid, first["id"], "--against", second["id"], "--json"), agent),
        (("checkpoints", "diff", sid, second["id"]), agent),
        (("sql", sid, "select id, done from todo order by id", "--max-rows", "1"), agent),
    )
    # The restore brought back the deleted row.
    result = json_of(rows)
    assert [c["name"] for c in result["columns"]] == ["id", "title", "done"]
    assert result["rows"] == [[1, "write docs", None], [2, "ship", True]]

    listed = json_of(tree_doc)
    assert listed["head_id"] == third["id"]
    assert {c["id"]: c["parent_id"] for c in listed["checkpoints"]} == {
        root: None,
        first["id"]: root,
        second["id"]: first["id"],
        third["id"]: first["id"],
    }

    # Drawn: each checkpoint one line, under its parent and indented deeper, children (oldest
    # first) side by side, the head marked.
    lines = stdout_of(tree).splitlines()
    assert lines[0] == f"session {sid}"
    ids = (root, first["id"], second["id"], third["id"])
    assert len(lines) == 1 + len(ids)
    at = {cid: next(i for i, line in enumerate(lines) if cid in line) for cid in ids}
    indent = {cid: lines[i].index(cid) for cid, i in at.items()}
    assert at[root] < at[first["id"]] < at[second["id"]] < at[third["id"]]
    assert indent[root] < indent[first["id"]] < indent[second["id"]] == indent[third["id"]]
    assert [line for line in lines if "HEAD" in line] == [lines[at[third["id"]]]]
    assert "two todos" in lines[at[first["id"]]]
    assert "after the restore" in lines[at[third["id"]]]

    changed = json_of(diff_doc)
    assert (changed["from_checkpoint_id"], changed["to_checkpoint_id"]) == (
        first["id"],
        second["id"],
    )
    todo = next(t for t in changed["tables"] if t["name"] == "public.todo")
    assert (todo["change"], todo["rows_from"], todo["rows_to"]) == ("changed", 2, 1)
    assert "public.todo" in stdout_of(diff)
    assert "1 -> 2" in stdout_of(diff)  # against HEAD: the restored rows

    # NULL shown as such, and the cut at --max-rows said.
    text = stdout_of(table).splitlines()
    assert text[0].split() == ["id", "done"]
    assert text[1].split() == ["1", "NULL"]
    assert text[-1] == "SELECT 2 (showing 1 of 2 rows; see --max-rows)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_input_is_one_line_and_the_exit_code_says_whose_fault(
    admin: dict[str, str], agent: dict[str, str], session: dict[str, Any]
) -> None:
    sid, unknown = session["id"], str(uuid.uuid4())
    no_token = {k: v for k, v in admin.items() if k != "AGENTDB_TOKEN"}
    cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = [
        # The command line is wrong: 2.
        (("sessions", "show", "not-an-id"), admin, 2, "SESSION_ID"),
        (("sql", sid, "select 1", "--bogus"), admin, 2, "--bogus"),
        (("sessions", "ls"), no_token, 2, "AGENTDB_TOKEN"),
        (("sessions", "ls", "--status", "sleeping"), admin, 2, "--status"),
        # agentdb refuses a value: 2, naming the option.
        (("sessions", "create", "--name", "orphan"), admin, 2, "--user: required"),
        (("users", "create", "not-an-email"), admin, 2, "EMAIL: "),
        (("checkpoints", "diff", sid, unknown, "--against", "yesterday"), agent, 2, "--against"),
        # The operation failed: 1.
        (("sessions", "show", unknown), admin, 1, f"no session {unknown}"),
        (("sql", sid, "select * from nope"), agent, 1, '42P01: relation "nope" does not exist'),
        (("sessions", "ls", "--token", "adb_not-a-token"), admin, 1, "token is not valid"),
        (
            ("sessions", "show", sid, "--url", f"http://127.0.0.1:{_free_port()}"),
            admin,
            1,
            "cannot reach",
        ),
    ]
    results = run_all(*((args, env) for args, env, _, _ in cases))
    for (args, _, code, wanted), result in zip(cases, results, strict=True):
        line = assert_one_line_error(result)
        assert result.returncode == code, (args, line)
        assert wanted in line, (args, line)
        assert ADMIN not in line
        assert result.stdout == "", (args, result.stdout)


def test_tokens_are_listed_without_secrets_and_revoked(
    admin: dict[str, str],
    user: dict[str, Any],
    session: dict[str, Any],
    tokens: tuple[dict[str, str], dict[str, str]],
) -> None:
    sid, as_user = session["id"], tokens[0]
    issued = doc("sessions", "token", sid, "--name", "short-lived", env=admin)
    assert issued["expires_at"] is not None  # session tokens expire by default
    doomed = {**admin, "AGENTDB_TOKEN": issued["token"]}
    of_user, of_session, table, neither, refused = run_all(
        (("tokens", "ls", "--user", user["id"], "--json"), as_user),
        (("tokens", "ls", "--session", sid, "--json"), admin),
        (("tokens", "ls", "--session", sid), admin),
        (("tokens", "ls"), admin),
        # A session token may not delete its session.
        (("sessions", "rm", sid), doomed),
    )
    listed = json_of(of_user)
    assert issued["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)
    assert issued["token"] not in of_user.stdout + of_session.stdout + table.stdout
    assert [t["id"] for t in json_of(of_session)][-1] == issued["id"]
    assert any(
        line.startswith(issued["id"]) and issued["prefix"] in line
        for line in stdout_of(table).splitlines()
    )
    assert neither.returncode == 2
    assert "--user or --session" in assert_one_line_error(neither)
    assert refused.returncode == 1
    assert "user or admin token" in assert_one_line_error(refused)

    revoked = doc("tokens", "revoke", issued["id"], env=as_user)
    assert revoked["revoked_at"] is not None
    after, shown = run_all(
        (("sessions", "show", sid), doomed), (("tokens", "show", issued["id"], "--json"), admin)
    )
    assert after.returncode == 1
    assert "token is not valid" in assert_one_line_error(after)
    assert json_of(shown)["revoked_at"] == revoked["revoked_at"]


def test_pins_usage_and_tier_changes(
    admin: dict[str, str], user: dict[str, Any], session: dict[str, Any], history: dict[str, Any]
) -> None:
    sid, second = session["id"], history["second"]["id"]
    pinned, usage, usage_table, bad_tier = run_all(
        (("checkpoints", "pin", sid, second, "--json"), admin),
        (("sessions", "usage", sid, "--json"), admin),
        (("sessions", "usage", sid), admin),
        (("users", "tier", user["id"], "gold"), admin),
    )
    # After the usage reads, which name the tier the session is in.
    (moved,) = run_all((("users", "tier", user["id"], "enterprise", "--json"), admin))
    assert (json_of(pinned)["id"], json_of(pinned)["pinned"]) == (second, True)
    assert json_of(usage)["session_id"] == sid
    assert json_of(usage)["tier"] == "pro"
    assert "no usage polled yet" in stdout_of(usage_table)
    change = json_of(moved)
    assert (change["from_tier"], change["to_tier"], change["status"]) == (
        "pro",
        "enterprise",
        "finished",
    )
    assert change["sessions_total"] == change["sessions_updated"] == 1
    line = assert_one_line_error(bad_tier)
    assert bad_tier.returncode == 2, line
    assert "tier" in line.lower()
    assert "must be one of free, pro, enterprise" in line
    unpinned = doc("checkpoints", "pin", sid, second, "--unpin", env=admin)
    assert unpinned["pinned"] is False
    assert doc("users", "tier", user["id"], "pro", env=admin)["status"] == "finished"


def test_token_modes_and_code_refs(
    admin: dict[str, str], agent: dict[str, str], session: dict[str, Any]
) -> None:
    sid = session["id"]
    issued, bad_mode, first = run_all(
        (("sessions", "token", sid, "--mode", "read_only", "--name", "reader", "--json"), admin),
        (("sessions", "token", sid, "--mode", "everything"), admin),
        (
            (
                "checkpoints",
                "create",
                sid,
                "--label",
                "code v1",
                "--code-ref",
                "git:c0de1",
                "--json",
            ),
            agent,
        ),
    )
    line = assert_one_line_error(bad_mode)
    assert bad_mode.returncode == 2, line
    assert "--mode" in line
    assert bad_mode.stdout == ""
    reader = json_of(issued)
    assert (reader["mode"], reader["name"]) == ("read_only", "reader")
    as_reader = {**admin, "AGENTDB_TOKEN": reader["token"]}
    checkpoint = json_of(first)
    assert checkpoint["code_ref"] == "git:c0de1"

    write, checkpointed, listed, shown, second = run_all(
        (("sql", sid, "create table nope (n int)"), as_reader),
        (("checkpoints", "create", sid), as_reader),
        (("tokens", "ls", "--session", sid), admin),
        (("tokens", "show", reader["id"]), admin),
        (("checkpoints", "create", sid, "--code-ref", "git:c0de2", "--json"), agent),
    )
    assert write.returncode == 1
    assert "read-only transaction" in assert_one_line_error(write)
    assert checkpointed.returncode == 1
    assert "read_only" in assert_one_line_error(checkpointed)
    (row,) = [x for x in stdout_of(listed).splitlines() if x.startswith(reader["id"])]
    assert row.split()[1:3] == ["session", "read_only"]
    assert ["mode", "read_only"] in [x.split() for x in stdout_of(shown).splitlines()]
    assert json_of(second)["code_ref"] == "git:c0de2"

    restored = doc("checkpoints", "restore", sid, checkpoint["id"], env=agent)
    assert restored["restored_code_ref"] == "git:c0de1"
    table, tree = run_all(
        (("checkpoints", "restore", sid, checkpoint["id"]), agent),
        (("checkpoints", "ls", sid), agent),
    )
    title = stdout_of(table).splitlines()[0]
    assert title == f"restored to checkpoint {checkpoint['id']} (code_ref git:c0de1)"
    assert any(
        checkpoint["id"] in x and "git:c0de1" in x and "HEAD" in x
        for x in stdout_of(tree).splitlines()
    )


def test_previews_branches_and_removal(
    admin: dict[str, str], user: dict[str, Any], session: dict[str, Any], history: dict[str, Any]
) -> None:
    """Runs last: it deletes the module's session."""
    sid, second = session["id"], history["second"]["id"]
    preview, branch = map(
        json_of,
        run_all(
            (("checkpoints", "preview", sid, second, "--ttl", "600", "--secrets", "--json"), admin),
            (("branches", "create", sid, "--from", second, "--name", "trial", "--json"), admin),
        ),
    )
    assert (preview["kind"], preview["source_checkpoint_id"]) == ("preview", second)
    assert preview["connection_uri"].startswith("postgresql://")
    assert (branch["kind"], branch["name"], branch["status"]) == ("dev", "trial", "ready")
    assert branch["source_checkpoint_id"] == second
    assert "connection_uri" not in branch

    listed, table, reset = run_all(
        (("branches", "ls", sid, "--json"), admin),
        (("branches", "ls", sid), admin),
        (("branches", "reset", sid, branch["id"], "--json"), admin),
    )
    assert {(b["id"], b["kind"]) for b in json_of(listed)} == {
        (preview["id"], "preview"),
        (branch["id"], "dev"),
    }
    assert "postgresql://" not in stdout_of(listed)
    assert [line.split()[:2] for line in stdout_of(table).splitlines()[1:]] == [
        [b["id"], b["kind"]] for b in json_of(listed)
    ]
    assert (json_of(reset)["id"], json_of(reset)["status"]) == (branch["id"], "ready")

    gone_branch, gone_checkpoint = run_all(
        (("branches", "rm", sid, branch["id"], "--json"), admin),
        (("checkpoints", "rm", sid, second, "--json"), admin),
    )
    assert json_of(gone_branch)["status"] in {"deleting", "deleted"}
    assert json_of(gone_checkpoint)["status"] in {"deleting", "deleted"}

    removed = doc("sessions", "rm", sid, env=admin)
    assert (removed["id"], removed["status"]) == (sid, "deleted")
    # Gone, and nothing else was left behind (the refused `sessions create` made none).
    assert doc("sessions", "ls", "--user", user["id"], env=admin) == []


# --- a light client ----------------------------------------------------------------------------

#: What a client command must not load: agentdb's server and the libraries only it needs.
SERVER_MODULES = ("litestar", "sqlalchemy", "sqlmodel", "alembic", "psycopg", "psycopg_pool")
SERVER_PACKAGES = (
    "meta_schema",
    "demo",
    "agentdb.services",
    "agentdb.api",
    "agentdb.runtime",
    "agentdb.pg",
    "agentdb.localplane",
    "agentdb.neon",
)
#: Runs the CLI's entry point as the console script does, then prints what it loaded.
LOADED_AFTER = """
import json, sys
from agentdb.cli import main
sys.argv = ["agentdb", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("LOADED " + json.dumps(sorted(sys.modules)))
"""


def server_modules_loaded(*args: str, env: dict[str, str]) -> list[str]:
    ran = subprocess.run(  # noqa: S603 - this interpreter, our own entry point
        [sys.executable, "-c", LOADED_AFTER, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    (line,) = [x for x in ran.stdout.splitlines() if x.startswith("LOADED ")]
    loaded: list[str] = json.loads(line.removeprefix("LOADED "))
    return [
        m
        for m in loaded
        if m.split(".")[0] in SERVER_MODULES
        or any(m == p or m.startswith(p + ".") for p in SERVER_PACKAGES)
    ]


def test_client_commands_load_none_of_the_server(admin: dict[str, str]) -> None:
    # `mcp` with a URL serves stdio until its input ends (here at once).
    for args in (("--help",), ("sessions", "ls", "--json"), ("mcp",), ("sql", "--help")):
        assert server_modules_loaded(*args, env=admin) == [], args
    # The check can fail: `serve` loads the server (then refuses the bad setting at once).
    refused = {**admin, "AGENTDB_LOCALPLANE_FAULTS": "nonsense"}
    assert "agentdb.runtime" in server_modules_loaded("serve", env=refused)
