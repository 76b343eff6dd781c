"""The tool definitions as function-calling schemas and through the dispatcher: the OpenAI and
Anthropic exports are valid JSON Schema, arguments built from them run every tool against real
sessions, bad arguments and refused calls are `ToolError`s an agent can act on, a session token
reaches its session only, and no result carries a connection string."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import pytest
from litestar import Litestar
from mcp import Client

from agentdb.sdk import AgentDB
from agentdb.tools import (
    PLATFORM_TOOLS,
    TOOLS,
    Toolbox,
    ToolError,
    build_mcp_server,
    scoped_toolbox,
)
from agentdb.tools._mcp import INSTRUCTIONS

from .conftest import Tenant, client_of, make_tenant

NAMES = {
    "run_sql",
    "create_checkpoint",
    "list_checkpoints",
    "restore_checkpoint",
    "preview_checkpoint",
    "diff_checkpoints",
    "create_branch",
    "reset_branch",
    "delete_branch",
    "get_session",
    "get_usage",
    "list_extensions",
    "create_role",
    "list_roles",
    "enable_auth",
    "enable_data_api",
}
META_SCHEMAS = [jsonschema.Draft202012Validator, jsonschema.Draft7Validator]


class _NoClient:
    """Schemas need no client; calls that fail validation never reach one."""


def exported(box: Toolbox) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (description, schema) from both exports, checked to agree."""
    openai = {
        t["function"]["name"]: (t["function"]["description"], t["function"]["parameters"])
        for t in box.openai_tools()
        if t["type"] == "function"
    }
    anthropic = {t["name"]: (t["description"], t["input_schema"]) for t in box.anthropic_tools()}
    assert openai == anthropic
    assert len(openai) == len(box.openai_tools()) == len(box.anthropic_tools())
    return openai


@pytest.mark.parametrize("bound", [False, True], ids=["unbound", "bound"])
@pytest.mark.parametrize("meta", META_SCHEMAS, ids=["2020-12", "draft7"])
def test_exports_are_valid_json_schema(bound: bool, meta: type[jsonschema.Validator]):
    box = Toolbox(_NoClient(), session_id=uuid.uuid4() if bound else None)  # type: ignore[arg-type]
    tools = exported(box)
    platform = {t.name for t in PLATFORM_TOOLS}
    assert {t.name for t in TOOLS} == NAMES
    # Opening and listing sessions is for the platform's tokens, never a session's.
    assert set(tools) == (NAMES if bound else NAMES | platform)
    for name, (description, schema) in tools.items():
        meta.check_schema(schema)
        assert schema["type"] == "object", name
        assert schema["additionalProperties"] is False, name
        assert len(description) > 80, name  # written for an LLM, not a label
        assert "$ref" not in json.dumps(schema), name  # self-contained, for every client
        if bound or name in platform:
            assert "session_id" not in schema["properties"], name
        else:
            assert schema["required"][0] == "session_id", name
            assert schema["properties"]["session_id"]["format"] == "uuid"


def test_descriptions_teach_the_checkpoint_workflow():
    described = {t.name: t.description for t in TOOLS}
    assert "create_checkpoint" in described["run_sql"]
    assert "$1, $2" in described["run_sql"]
    assert "role" in described["run_sql"]
    assert "timeout" in described["run_sql"]
    assert "every meaningful step" in described["create_checkpoint"]
    restore = described["restore_checkpoint"]
    assert "connection string stays the same" in restore
    assert "Later checkpoints are kept" in restore
    assert "hangs under the restored one" in restore
    for name in ("preview_checkpoint", "create_branch"):
        assert "expires" in described[name]
        assert "different database" in described[name]


def test_no_tool_does_what_a_session_token_may_not():
    """Deleting the session or checkpoints and turning add-ons off need a user or admin token:
    no tool offers them, and the instructions and descriptions say so."""
    names = {t.name for t in TOOLS}
    for refused in ("delete_session", "delete_checkpoint", "disable_auth", "disable_data_api"):
        assert refused not in names
    assert "need a user or admin token" in INSTRUCTIONS
    described = {t.name: t.description for t in TOOLS}
    assert "never deleted by the agent" in described["restore_checkpoint"]
    for name in ("enable_auth", "enable_data_api"):
        assert "platform's call" in described[name]


def arguments_for(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Every property of `schema` (required and optional) with a value from `values` (None:
    leave that optional one out), checked against the schema: a property the test does not
    know fails here."""
    unknown = set(schema["properties"]) - set(values)
    assert not unknown, f"no test value for {unknown}"
    arguments = {n: values[n] for n in schema["properties"] if values[n] is not None}
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(arguments)
    return arguments


async def test_every_tool_round_trips_through_the_dispatcher(api_app: Litestar, tenant: Tenant):  # noqa: PLR0915
    async with client_of(api_app, tenant.session_token) as client:
        box = Toolbox(client, session_id=tenant.session_id)
        schemas = {name: schema for name, (_, schema) in exported(box).items()}
        values: dict[str, Any] = {
            "sql": "CREATE TABLE notes (n int, body text); INSERT INTO notes VALUES (1, 'one')",
            "max_rows": 50,
            "timeout_seconds": 10,
            "label": "notes table",
            "message": "created the notes table",
            "metadata": {"commit": "abc123"},
            "code_ref": "git:abc123",
            "name": "experiment",
            "ttl_seconds": 600,
            "against": "HEAD",
            "add_default_grants": True,
        }

        async def call(name: str, **override: Any) -> Any:
            arguments = arguments_for(schemas[name], values | override)
            # OpenAI hands the arguments over as JSON text: the dispatcher takes both.
            result = await box.call(name, json.dumps(arguments))
            json.dumps(result)  # JSON-able as is
            return result

        created = await call("run_sql", params=None)
        assert created["command"] == "INSERT 0 1"
        one = await call("create_checkpoint")
        assert one["label"] == "notes table"
        assert one["metadata"] == {"commit": "abc123"}
        assert one["code_ref"] == "git:abc123"
        values["checkpoint_id"] = one["id"]

        inserted = await call("run_sql", sql="INSERT INTO notes VALUES ($1, $2)", params=[2, "two"])
        assert inserted["command"] == "INSERT 0 1"
        rows = await call("run_sql", sql="SELECT n FROM notes WHERE n > $1", params=[0], max_rows=1)
        assert rows["rows"] == [[1]]
        assert rows["truncated"] is True
        assert rows["columns"] == [{"name": "n", "type": "integer"}]

        tree = await call("list_checkpoints")
        assert tree["head_id"] == one["id"]
        root, last = tree["checkpoints"]  # every session starts with a root checkpoint
        assert (last["id"], last["parent_id"]) == (one["id"], root["id"])
        diff = await call("diff_checkpoints")
        assert diff["to"] == "HEAD"
        assert [(t["name"], t["rows_from"], t["rows_to"]) for t in diff["tables"]] == [
            ("public.notes", 1, 2)
        ]

        preview = await call("preview_checkpoint")
        assert preview["kind"] == "preview"
        assert preview["source_checkpoint_id"] == one["id"]
        assert preview["expires_at"]
        branch = await call("create_branch")
        assert (branch["kind"], branch["name"]) == ("dev", "experiment")
        values["branch_id"] = branch["id"]
        assert (await call("reset_branch"))["id"] == branch["id"]
        assert (await call("delete_branch"))["status"] == "deleted"

        restored = await call("restore_checkpoint")
        assert restored["head_checkpoint_id"] == one["id"]
        assert restored["restored_code_ref"] == "git:abc123"
        after = await call("run_sql", sql="SELECT n, body FROM notes ORDER BY n", params=None)
        assert after["rows"] == [[1, "one"]]
        session = await call("get_session")
        assert session["id"] == str(tenant.session_id)
        assert session["status"] == "ready"

        values["name"] = "app_user"
        role = await call("create_role")
        assert (role["name"], role["owner"]) == ("app_user", False)
        assert role["sql_name"].startswith("app_user")
        assert "connection_uri" not in role
        roles = (await call("list_roles"))["roles"]
        assert [(r["name"], r["owner"]) for r in roles][1:] == [("app_user", False)]
        assert roles[0]["owner"] is True
        extensions = {e["name"]: e for e in (await call("list_extensions"))["extensions"]}
        assert extensions["vector"]["installable"] is True
        assert extensions["dblink"]["installable"] is False
        with pytest.raises(ToolError, match=r"hint: .*create_role"):
            await box.call("run_sql", {"sql": "CREATE ROLE app_user"})

        auth = await call("enable_auth")
        assert auth["enabled"] is True
        assert auth["sign_up_url"] == f"{auth['base_url']}/sign-up/email"
        assert auth["jwks_url"]
        assert "secret_server_key" not in auth
        api = await call("enable_data_api")
        assert api["enabled"] is True
        assert api["url"]
        assert api["jwks_url"] == auth["jwks_url"]
        assert (await call("enable_data_api"))["url"] == api["url"]  # twice is fine
        async with client_of(api_app, tenant.user_token) as owner:
            secret = (await owner.get_auth(tenant.session_id)).secret_server_key
        assert secret
        assert secret not in json.dumps([auth, api])


async def test_an_unbound_toolbox_takes_the_session_id(api_app: Litestar, tenant: Tenant):
    async with client_of(api_app, tenant.user_token) as client:
        box = Toolbox(client)
        session = await box.call("get_session", {"session_id": str(tenant.session_id)})
        assert session["id"] == str(tenant.session_id)
        with pytest.raises(ToolError, match=r"^session_id: required"):
            await box.call("get_session", {})


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("drop_database", {}, r"unknown tool 'drop_database'; the tools are: run_sql, "),
        ("run_sql", {}, r"^sql: required$"),
        ("run_sql", {"sql": ""}, r"^sql: String should have at least 1 character"),
        ("run_sql", {"sql": "SELECT 1", "max_rows": 0}, r"^max_rows: Input should be greater"),
        ("run_sql", {"sql": "SELECT 1", "rows": 5}, r"^rows: unknown argument \(the arguments "),
        ("run_sql", '{"sql": "SELECT 1"', r"^the arguments are not valid JSON"),
        ("run_sql", "[1, 2]", r"^the arguments must be a JSON object$"),
        ("restore_checkpoint", {}, r"^checkpoint_id: required$"),
        ("restore_checkpoint", {"checkpoint_id": "latest"}, r"^checkpoint_id: Input should be"),
        ("create_branch", {"ttl_seconds": -1}, r"^ttl_seconds: Input should be greater than 0"),
        ("create_checkpoint", {"label": 5, "metadata": []}, r"^label: .*; metadata: "),
        ("list_checkpoints", {"verbose": True}, r"^verbose: unknown argument .*: none\)$"),
    ],
)
async def test_bad_arguments_are_tool_errors_and_change_nothing(
    api_app: Litestar, tenant: Tenant, name: str, arguments: Any, message: str
):
    async with client_of(api_app, tenant.session_token) as client:
        box = Toolbox(client, session_id=tenant.session_id)
        before = await client.list_checkpoints(tenant.session_id)
        with pytest.raises(ToolError, match=message) as caught:
            await box.call(name, arguments)
        assert caught.value.status is None  # refused before any request
        assert await client.list_checkpoints(tenant.session_id) == before
        assert await client.list_branches(tenant.session_id) == []


async def test_refused_calls_carry_the_apis_explanation(api_app: Litestar, tenant: Tenant):
    async with client_of(api_app, tenant.session_token) as client:
        box = Toolbox(client, session_id=tenant.session_id)
        with pytest.raises(ToolError, match=r"42P01: relation \"missing\" does not exist") as sql:
            await box.call("run_sql", {"sql": "CREATE TABLE kept (n int); SELECT * FROM missing"})
        assert sql.value.status == 422
        # One transaction per call: the CREATE before the failing statement is gone too.
        tables = await box.call(
            "run_sql", {"sql": "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'"}
        )
        assert tables["rows"] == [[0]]

        unknown = str(uuid.uuid4())
        with pytest.raises(ToolError, match=unknown) as missing:
            await box.call("restore_checkpoint", {"checkpoint_id": unknown})
        assert missing.value.status == 404
        with pytest.raises(ToolError, match="against") as against:
            await box.call("diff_checkpoints", {"checkpoint_id": unknown, "against": "yesterday"})
        assert against.value.status == 400


async def test_a_session_token_reaches_its_session_only(
    api_app: Litestar, admin: AgentDB, tenant: Tenant
):
    other = await make_tenant(admin, "other")
    async with client_of(api_app, tenant.session_token) as client:
        box = await scoped_toolbox(client, tenant.session_token)
        assert box.session_id == tenant.session_id
        with pytest.raises(ToolError, match=r"works on session .* only; leave session_id out"):
            await box.call("get_session", {"session_id": str(other.session_id)})
        # The same session named explicitly is fine.
        own = await box.call("get_session", {"session_id": str(tenant.session_id)})
        assert own["id"] == str(tenant.session_id)
        # Even a toolbox that lets the agent choose cannot get past the API's authorization.
        free = Toolbox(client)
        for name, extra in [("get_session", {}), ("run_sql", {"sql": "SELECT 1"})]:
            with pytest.raises(ToolError, match=str(other.session_id)) as caught:
                await free.call(name, {"session_id": str(other.session_id), **extra})
            assert caught.value.status == 404


async def test_results_never_carry_a_connection_string(api_app: Litestar, tenant: Tenant):
    # A user token sees connection URIs in the REST answers; the tools still drop them.
    async with client_of(api_app, tenant.user_token) as client:
        assert (await client.get_session(tenant.session_id)).connection_uri
        box = await scoped_toolbox(client, tenant.user_token)
        assert box.session_id is None
        sid = {"session_id": str(tenant.session_id)}
        checkpoint = await box.call("create_checkpoint", sid)
        results = [
            await box.call("get_session", sid),
            await box.call("create_branch", sid),
            await box.call("preview_checkpoint", sid | {"checkpoint_id": checkpoint["id"]}),
            await box.call("restore_checkpoint", sid | {"checkpoint_id": checkpoint["id"]}),
        ]
    text = json.dumps(results)
    assert "connection_uri" not in text
    assert "postgres://" not in text
    assert "postgresql://" not in text


async def test_the_mcp_server_offers_the_same_tools(api_app: Litestar, tenant: Tenant):
    async with client_of(api_app, tenant.session_token) as client:
        box = Toolbox(client, session_id=tenant.session_id)
        async with Client(build_mcp_server(box)) as mcp:
            listed = (await mcp.list_tools()).tools
            assert {t.name: (t.description, t.input_schema) for t in listed} == exported(box)
            annotations = {t.name: t.annotations for t in listed}
            assert annotations["list_checkpoints"].read_only_hint is True
            assert annotations["restore_checkpoint"].destructive_hint is True
            assert annotations["restore_checkpoint"].idempotent_hint is False
            assert annotations["enable_auth"].idempotent_hint is True
            assert annotations["diff_checkpoints"].idempotent_hint is True

            ok = await mcp.call_tool("run_sql", {"sql": "SELECT 40 + 2 AS answer"})
            assert not ok.is_error
            assert ok.structured_content["rows"] == [[42]]
            assert json.loads(ok.content[0].text) == ok.structured_content

            bad = await mcp.call_tool("restore_checkpoint", {"checkpoint_id": "latest"})
            assert bad.is_error
            assert bad.content[0].text.startswith("checkpoint_id: Input should be a valid UUID")
