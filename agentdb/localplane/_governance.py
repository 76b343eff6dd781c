"""Resource governance of tenants in the shared cluster: per-role limits and the reaper.

Every tenant login role (a member of a project's `lp_<key>` group, the project's Data API
authenticator included; never the plane's `lpa_<key>_service` nor a superuser) gets a connection
limit and role defaults set by the superuser. `temp_file_limit` is superuser-only, so the tenant
can neither raise nor reset it. The others (statement and idle-in-transaction timeouts, the
client connection check) can be changed by the tenant in its own session, so the plane's guard
enforces the hard boundary: one cluster-wide query cancels tenant statements running past
`statement_max_s`, terminates those that ignore the cancel (a PL/pgSQL loop may catch
`query_canceled`) and terminates tenant sessions idle in a transaction past the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from psycopg import AsyncConnection, errors, sql

log = structlog.get_logger(__name__)

# A statement that survives its cancel this long is terminated: `exception when
# query_canceled then null` in a loop swallows every cancel.
_ESCALATE_AFTER_S = 5.0

# Tenant login roles: direct members of a project's group role `lp_<key>`, minus the plane's
# service roles and superusers.
_TENANT_ROLES = r"""
SELECT m.oid, m.rolname, m.rolconnlimit,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                  WHERE s.setrole = m.oid AND s.setdatabase = 0), '{}') AS setconfig
  FROM pg_roles m
 WHERE m.rolcanlogin AND NOT m.rolsuper
   AND m.rolname !~ '^lpa_.*_service$'
   AND (%(only)s::text[] IS NULL OR m.rolname = ANY(%(only)s))
   AND EXISTS (SELECT 1 FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
                WHERE a.member = m.oid AND g.rolname LIKE 'lp\_%%')
"""

_REAP = r"""
WITH tenants AS (
    SELECT m.oid FROM pg_roles m
     WHERE m.rolcanlogin AND NOT m.rolsuper AND m.rolname !~ '^lpa_.*_service$'
       AND EXISTS (SELECT 1 FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
                    WHERE a.member = m.oid AND g.rolname LIKE 'lp\_%%')
), over AS (
    SELECT s.pid, s.state,
           CASE
             WHEN s.state = 'active'
                  AND s.query_start < clock_timestamp() - make_interval(secs => %(kill)s)
               THEN 'terminate'
             WHEN s.state = 'active'
               THEN 'cancel'
             ELSE 'terminate'
           END AS action
      FROM pg_stat_activity s
     WHERE s.backend_type = 'client backend'
       AND s.usesysid IN (SELECT oid FROM tenants)
       AND ((s.state = 'active'
             AND s.query_start < clock_timestamp() - make_interval(secs => %(statement)s))
         OR (s.state IN ('idle in transaction', 'idle in transaction (aborted)')
             AND s.state_change < clock_timestamp() - make_interval(secs => %(idle)s)))
)
SELECT pid, state, action,
       CASE action WHEN 'cancel' THEN pg_cancel_backend(pid) ELSE pg_terminate_backend(pid) END
  FROM over
"""


@dataclass(frozen=True)
class Limits:
    """What one tenant login role may use of the shared cluster (Settings `localplane_*`)."""

    role_connections: int = 20
    temp_file_limit_mb: int = 1024
    statement_max_s: float = 3600.0
    idle_in_transaction_s: float = 60.0
    client_check_interval_s: float = 0.5
    guard_interval_s: float = 5.0
    size_watch_interval_s: float = 0.1
    min_free_disk_mb: int = 1024
    backend_memory_max_mb: int = 1024

    def role_settings(self) -> dict[str, str]:
        """Role defaults, as `pg_db_role_setting` stores them (name=value)."""
        return {
            "temp_file_limit": f"{self.temp_file_limit_mb}MB",
            "statement_timeout": f"{_ms(self.statement_max_s)}ms",
            "idle_in_transaction_session_timeout": f"{_ms(self.idle_in_transaction_s)}ms",
            "client_connection_check_interval": f"{_ms(self.client_check_interval_s)}ms",
        }


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


async def govern_roles(
    conn: AsyncConnection, limits: Limits, only: list[str] | None = None
) -> list[str]:
    """Gives every tenant login role (or those of `only`) the limits it lacks; returns the
    roles changed. Idempotent: a role already governed costs one catalog read."""
    cur = await conn.execute(_TENANT_ROLES, {"only": only})
    wanted = limits.role_settings()
    changed: list[str] = []
    for _oid, name, connlimit, setconfig in await cur.fetchall():
        role = sql.Identifier(str(name))
        current = set(setconfig or [])
        missing = {k: v for k, v in wanted.items() if f"{k}={v}" not in current}
        if connlimit != limits.role_connections:
            await conn.execute(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    role, sql.Literal(limits.role_connections)
                )
            )
        for key, value in missing.items():
            statement = sql.SQL("ALTER ROLE {} SET {} = {}").format(
                role, sql.Identifier(key), sql.Literal(value)
            )
            try:
                await conn.execute(statement)
            except errors.UniqueViolation:
                # Another process set the role's first default at the same moment (both
                # inserted its pg_db_role_setting row); now the row is there to update.
                await conn.execute(statement)
        if missing or connlimit != limits.role_connections:
            changed.append(str(name))
    if changed:
        log.info("localplane.roles_governed", count=len(changed))
    return changed


async def reap(conn: AsyncConnection, limits: Limits) -> list[tuple[int, str]]:
    """Cancels tenant statements past the maximum, terminates those that outlived a cancel and
    sessions idle in a transaction past the limit; returns (pid, action) per backend hit."""
    cur = await conn.execute(
        _REAP,
        {
            "statement": limits.statement_max_s,
            "kill": limits.statement_max_s + _ESCALATE_AFTER_S,
            "idle": limits.idle_in_transaction_s,
        },
    )
    hit = [(int(pid), str(action)) for pid, _state, action, _ok in await cur.fetchall()]
    if hit:
        log.warning(
            "localplane.tenant_backends_reaped",
            cancelled=sum(1 for _, a in hit if a == "cancel"),
            terminated=sum(1 for _, a in hit if a == "terminate"),
        )
    return hit
