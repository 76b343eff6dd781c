"""agentdb's settings: one pydantic-settings class, read from `AGENTDB_*` environment variables.

Nothing else in agentdb reads `os.environ`. Every setting has a default that runs agentdb on the
embedded PostgreSQL and the local control plane.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentdb.wire._limits import MAX_SQL_ROWS, MAX_SQL_TIMEOUT_SECONDS


def _default_data_dir() -> Path:
    # Under root the embedded PostgreSQL runs as an unprivileged user, who could not traverse
    # root's home; a service's conventional place is /var/lib.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/agentdb")
    return Path(platformdirs.user_data_dir("agentdb", appauthor=False))


FERNET_KEY_BYTES = 32
#: An operator's admin token: at least 32 characters (a guessable one would be the platform's
#: weakest secret), at most what a request header sensibly carries.
MIN_ADMIN_TOKEN, MAX_ADMIN_TOKEN = 32, 1024


class Settings(BaseSettings):
    """All of agentdb's configuration."""

    model_config = SettingsConfigDict(env_prefix="AGENTDB_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded PostgreSQL cluster and local state live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="Superuser DSN of an existing PostgreSQL to use instead of the embedded one.",
    )
    pg_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port for the embedded PostgreSQL (default: remembered, else a free one).",
    )
    localplane_api_key: SecretStr | None = Field(
        default=None,
        description="If set, the local control plane accepts only this bearer token.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="The URL apps reach agentdb (or `agentdb localplane serve`) at, without a "
        "trailing path to an API: the base of the Neon Auth and Data API URLs the local control "
        "plane hands out. Default: the listener's own address (for `agentdb serve`), else the "
        "URL the request came in on.",
    )
    localplane_proxy: bool = Field(
        default=True,
        description="Run the local plane's connection proxy: connection URIs then carry Neon's "
        "role and database names, TLS (sslmode=require, channel_binding=require) and the "
        "endpoint (options=endpoint%3D<id>), and new connections are held through a "
        "checkpoint's or restore's switch instead of refused.",
    )
    localplane_proxy_host: str = Field(
        default="127.0.0.1", description="Interface the connection proxy listens on."
    )
    localplane_proxy_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="The connection proxy's TCP port (0: the one it had last time, else a free "
        "one).",
    )
    localplane_faults: str = Field(
        default="",
        description="Local-plane fault injection, e.g. '423=0.2,429=0.1,500=0.05,latency_ms=50'.",
    )
    localplane_operation_delay_ms: int = Field(
        default=0,
        ge=0,
        description="Extra time each local-plane operation stays 'running'.",
    )
    localplane_organizations: str = Field(
        default="",
        pattern=r"^([a-z0-9-]{1,60}(,[a-z0-9-]{1,60})*)?$",
        description="Comma-separated organization ids the local control plane starts with "
        "(besides its default organization and the tiers' organizations).",
    )
    localplane_meter_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the local control plane measures consumption (active time, "
        "written bytes, logical size) and enforces project quotas, in seconds.",
    )
    localplane_role_connection_limit: int = Field(
        default=20,
        ge=1,
        description="Connections each tenant login role (and each project's Data API "
        "authenticator) may hold in the shared cluster.",
    )
    localplane_temp_file_limit_mb: int = Field(
        default=1024,
        ge=1,
        description="Temporary-file space one tenant backend may use (temp_file_limit), in MiB.",
    )
    localplane_statement_max_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest a tenant statement may run: the role default statement_timeout, "
        "and the local plane's guard cancels (then ends) statements past it.",
    )
    localplane_idle_in_transaction_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest a tenant session may sit idle inside a transaction, in seconds.",
    )
    localplane_guard_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the local plane's guard looks for tenant backends past their "
        "limits and for databases a crash left closed, in seconds.",
    )
    localplane_size_watch_interval_s: float = Field(
        default=0.1,
        gt=0,
        description="How often the local plane measures the branches with a statement running "
        "and makes one past its logical-size quota read-only, in seconds (a size quota is "
        "overshot by what one interval of writing adds).",
    )
    localplane_min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Free disk (MiB) under which every project database turns read-only, so "
        "agentdb's own databases stay writable; writes resume at 25 % more (0: never).",
    )
    localplane_backend_memory_max_mb: int = Field(
        default=1024,
        ge=0,
        description="Private memory (MiB) past which a tenant's backend running a statement is "
        "ended: PostgreSQL lets any role raise its own work_mem, this bounds what that costs "
        "(0: never).",
    )
    kill_at: str = Field(
        default="",
        description="Crash tests only: a workflow kill point (e.g. 'restore.restored' or "
        "'checkpoint.snapshot_taken:2') where agentdb SIGKILLs its own process.",
    )
    localplane_kill_at: str = Field(
        default="",
        description="Crash tests only: a kill point (e.g. 'swap.renamed' or "
        "'job.step_done:2') where the local plane SIGKILLs its own process.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Least severe log lines written to stderr.",
    )
    log_format: Literal["console", "json"] = Field(
        default="console",
        description="How log lines are written: `console` (key=value text) or `json` (one JSON "
        "object per line, for a log pipeline; a request's lines carry its request_id, "
        "token_id and session_id).",
    )

    # --- agentdb serve -------------------------------------------------------------------------
    admin_token: SecretStr | None = Field(
        default=None,
        description="The platform's admin bearer token (default: generated on first start, "
        "stored hashed and printed once).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="A bearer token good for `/metrics` alone, for a Prometheus scraper "
        "(32+ characters; default: none, and only the admin token reads `/metrics`).",
    )
    session_token_ttl_s: int = Field(
        default=86_400,
        gt=0,
        description="Lifetime of a session token issued without `ttl_seconds`, in seconds "
        "(an agent's token should not outlive its work by much).",
    )
    session_token_max_ttl_s: int = Field(
        default=30 * 86_400,
        gt=0,
        le=10 * 365 * 86_400,
        description="Longest lifetime a session token may be issued with, in seconds.",
    )
    auth_failure_limit: str = Field(
        default="30/minute;300/hour",
        description="How many requests with a wrong token one client address may send before "
        "it gets 429 Too Many Requests, as rate limits like '30/minute;300/hour' ('' turns "
        "throttling off). Tokens that worked recently are let through regardless.",
    )
    token_rate_limit: str = Field(
        default="600/minute",
        description="Requests one user or session token may send, as rate limits like "
        "'600/minute' or '20/second;600/minute' ('' turns it off); over it: 429 with "
        "Retry-After. The admin token has AGENTDB_ADMIN_RATE_LIMIT instead.",
    )
    token_expensive_rate_limit: str = Field(
        default="120/minute",
        description="Of those, control-plane operations one user or session token may ask for "
        "(open a session, checkpoint, restore, preview, branch, reset a branch), as rate "
        "limits ('' turns it off).",
    )
    admin_rate_limit: str = Field(
        default="",
        description="Requests the admin token (the platform) may send, as rate limits "
        "(default '': no limit). The admin token has no concurrency limit.",
    )
    token_max_concurrent: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Requests one user or session token may have in flight at once; more "
        "answer 429 (Retry-After: 1). Counted per agentdb process.",
    )
    user_max_concurrent: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Requests all of one user's tokens (the user's and their sessions') may "
        "have in flight at once; more answer 429 (Retry-After: 1). Counted per agentdb process.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key that encrypts connection secrets at rest (default: generated "
        "into <data_dir>/secret.key on first start).",
    )
    meta_database: str = Field(
        default="agentdb_meta",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Name of the meta database inside the PostgreSQL server.",
    )
    project_prefix: str = Field(
        default="agentdb-",
        pattern=r"^[a-z][a-z0-9-]{0,19}$",
        description="Start of every session's project name; the reconciler deletes only "
        "projects with this prefix that no session owns.",
    )
    neon_api_key: SecretStr | None = Field(
        default=None,
        description="Neon API key: set it to run sessions on Neon cloud instead of the local "
        "control plane.",
    )
    neon_api_url: str = Field(
        default="https://console.neon.tech/api/v2",
        description="Neon API base URL (used only with AGENTDB_NEON_API_KEY).",
    )
    neon_org_id: str | None = Field(
        default=None,
        description="Neon organization that owns the sessions' projects (cloud mode).",
    )
    compute_min_cu: float = Field(
        default=0.25,
        ge=0.25,
        le=56,
        description="Smallest size of a session's compute, in Neon compute units.",
    )
    compute_max_cu: float = Field(
        default=2,
        ge=0.25,
        le=56,
        description="Largest size a session's compute autoscales to, in Neon compute units.",
    )
    compute_suspend_timeout_s: int = Field(
        default=300,
        ge=-1,
        le=604_800,
        description="Idle seconds before a session's compute suspends (0: Neon's default, "
        "-1: never).",
    )
    warm_pool_size: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Ready projects kept for the default tier's session creates (the warm "
        "pool: a create takes one instead of waiting for the control plane); 0 disables it. "
        "Other tiers set `warm_pool_size` in the tiers file. Warm projects are real projects: "
        "on Neon they count toward the organization's project limit.",
    )
    tiers_file: Path | None = Field(
        default=None,
        description="TOML file of the tiers (organization, compute, quota, session and "
        "checkpoint limits per plan); default: built-in free, pro and enterprise tiers.",
    )
    sql_statement_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_SQL_TIMEOUT_SECONDS,
        description="Statement timeout for SQL run through agentdb, in seconds.",
    )
    sql_max_rows: int = Field(
        default=1000,
        ge=1,
        le=MAX_SQL_ROWS,
        description="Most rows one SQL call returns (the rest are cut, `truncated` says so).",
    )
    audit_sql_max_chars: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="How much of each SQL call's text its `sql.run` audit event keeps (the "
        "event always has the whole text's SHA-256; parameters' values are never recorded).",
    )
    sql_max_result_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Most bytes of row JSON one SQL call returns (the rows past it are cut, "
        "`truncated` says so); results are read a row at a time, so a call's memory stays near "
        "this.",
    )
    sql_user_read_rate: int = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of result rows per second one user's SQL calls may read, across all "
        "their sessions; a burst of as much passes at once. A user streaming huge results again "
        "and again waits, so it cannot take agentdb's CPU from other users.",
    )
    sql_idle_connections: int = Field(
        default=64,
        ge=0,
        description="Connections of finished SQL calls kept open for their session's next call "
        "(at most 2 per session, each for 30 s): a call on a kept connection skips connecting "
        "and authenticating. Each holds a backend of the session's role; 0 keeps none.",
    )
    branch_ttl_s: int = Field(
        default=86_400,
        gt=0,
        description="Default lifetime of dev and preview branches, in seconds.",
    )
    reconcile_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the reconciler looks for interrupted workflows, in seconds.",
    )
    expiry_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often expired branches and replaced branches are cleaned up, in seconds.",
    )
    usage_poll_interval_s: float = Field(
        default=900.0,
        ge=900,
        description="How often consumption is read from the control plane into usage samples, "
        "in seconds (Neon refreshes it about every 15 minutes; at least 900).",
    )

    demo: bool | None = Field(
        default=None,
        description="Serve the chat demo at /demo/ from `agentdb serve` (behind a sign-in with "
        "an admin or user token); default: on with the local control plane, off with Neon cloud.",
    )
    demo_max_sessions: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Most agentdb sessions the chat demo keeps at once (one per browser chat).",
    )

    # --- clients of a running agentdb (the operator commands, `agentdb mcp`) -------------------
    url: str | None = Field(
        default=None,
        description="URL of a running `agentdb serve`, e.g. http://127.0.0.1:8000.",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token (admin, user or session) for the agentdb at AGENTDB_URL.",
    )

    @field_validator("secret_key")
    @classmethod
    def _fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                raw = base64.urlsafe_b64decode(value.get_secret_value().encode("ascii"))
            except (ValueError, binascii.Error):
                raw = b""
            if len(raw) != FERNET_KEY_BYTES:
                raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes)")
        return value

    @field_validator("admin_token", "metrics_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            token = value.get_secret_value()
            if not MIN_ADMIN_TOKEN <= len(token) <= MAX_ADMIN_TOKEN or any(
                c.isspace() for c in token
            ):
                raise ValueError(
                    f"must be {MIN_ADMIN_TOKEN} to {MAX_ADMIN_TOKEN} characters without spaces"
                )
        return value

    @field_validator(
        "auth_failure_limit", "token_rate_limit", "token_expensive_rate_limit", "admin_rate_limit"
    )
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many  # noqa: PLC0415 - only a value set by hand is parsed

            try:
                items = parse_many(value)
            except ValueError:
                items = []
            if not items or any(item.amount < 1 for item in items):
                raise ValueError("not rate limits such as '30/minute' or '30/minute;300/hour'")
        return value

    @model_validator(mode="after")
    def _token_ttls(self) -> Settings:
        if self.session_token_ttl_s > self.session_token_max_ttl_s:
            raise ValueError(
                "AGENTDB_SESSION_TOKEN_TTL_S must not exceed AGENTDB_SESSION_TOKEN_MAX_TTL_S"
            )
        return self

    @model_validator(mode="after")
    def _compute_range(self) -> Settings:
        if self.compute_min_cu > self.compute_max_cu:
            raise ValueError("compute_min_cu must not exceed compute_max_cu")
        return self

    @property
    def uses_neon_cloud(self) -> bool:
        return self.neon_api_key is not None
