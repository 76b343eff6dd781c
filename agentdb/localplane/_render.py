"""Records rendered as Neon API v2 JSON objects (shapes from `openapi-v2.json`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    PeriodUsage,
    ProjectRecord,
    RoleRecord,
    SnapshotRecord,
    now,
)

JSON = dict[str, Any]
PLATFORM = "local"
CREATION_SOURCE = "agentdb-localplane"


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _drop_none(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if v is not None}


def _usage(usage: PeriodUsage | None) -> PeriodUsage:
    if usage is not None:
        return usage
    # Not measured yet: this month, nothing used.
    start = now().replace(day=1, hour=0, minute=0, second=0)
    return PeriodUsage(period_start=start, period_end=(start + timedelta(days=32)).replace(day=1))


def _size_limit(p: ProjectRecord) -> int:
    return p.quota.get("logical_size_bytes", 0)


def project(p: ProjectRecord, *, host: str, usage: PeriodUsage | None = None) -> JSON:
    u = _usage(usage)
    return _drop_none(
        {
            "id": p.id,
            "platform_id": PLATFORM,
            "region_id": p.region_id,
            "name": p.name,
            "provisioner": "k8s-neonvm",
            "pg_version": p.pg_version,
            "proxy_host": host,
            "branch_logical_size_limit": _size_limit(p) // 2**20,
            "branch_logical_size_limit_bytes": _size_limit(p),
            "store_passwords": p.store_passwords,
            "cpu_used_sec": u.compute_time_seconds,
            "active_time_seconds": u.active_time_seconds,
            "compute_time_seconds": u.compute_time_seconds,
            "written_data_bytes": u.written_data_bytes,
            "data_transfer_bytes": u.data_transfer_bytes,
            "data_storage_bytes_hour": u.data_storage_bytes_hour,
            "synthetic_storage_size": u.synthetic_storage_size,
            "consumption_period_start": ts(u.period_start),
            "consumption_period_end": ts(u.period_end),
            "compute_last_active_at": ts(u.compute_last_active_at),
            "creation_source": CREATION_SOURCE,
            "history_retention_seconds": p.history_retention_seconds,
            "created_at": ts(p.created_at),
            "updated_at": ts(p.updated_at),
            "owner_id": "local",
            "org_id": p.org_id,
            "settings": p.settings,
            "default_endpoint_settings": p.default_endpoint_settings,
        }
    )


def project_list_item(p: ProjectRecord, *, host: str, usage: PeriodUsage | None = None) -> JSON:
    u = _usage(usage)
    return _drop_none(
        {
            "id": p.id,
            "platform_id": PLATFORM,
            "region_id": p.region_id,
            "name": p.name,
            "provisioner": "k8s-neonvm",
            "pg_version": p.pg_version,
            "proxy_host": host,
            "branch_logical_size_limit": _size_limit(p) // 2**20,
            "branch_logical_size_limit_bytes": _size_limit(p),
            "store_passwords": p.store_passwords,
            "cpu_used_sec": u.compute_time_seconds,
            "active_time": u.active_time_seconds,
            "synthetic_storage_size": u.synthetic_storage_size,
            "compute_last_active_at": ts(u.compute_last_active_at),
            "creation_source": CREATION_SOURCE,
            "history_retention_seconds": p.history_retention_seconds,
            "created_at": ts(p.created_at),
            "updated_at": ts(p.updated_at),
            "owner_id": "local",
            "org_id": p.org_id,
            "settings": p.settings,
            "default_endpoint_settings": p.default_endpoint_settings,
        }
    )


def branch(b: BranchRecord) -> JSON:
    return _drop_none(
        {
            "id": b.id,
            "project_id": b.project_id,
            "parent_id": b.parent_id,
            "name": b.name,
            "current_state": b.current_state,
            "state_changed_at": ts(b.state_changed_at),
            "logical_size": b.logical_size,
            "creation_source": CREATION_SOURCE,
            "default": b.default,
            "primary": b.default,
            "protected": b.protected,
            "cpu_used_sec": 0,
            "active_time_seconds": 0,
            "compute_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
            "created_at": ts(b.created_at),
            "updated_at": ts(b.updated_at),
            "init_source": b.init_source,
            "expires_at": ts(b.expires_at),
            "restore_status": b.restore_status,
            "restored_from": b.restored_from,
            "restored_as": b.restored_as,
        }
    )


def annotation(b: BranchRecord) -> JSON:
    return {"object": {"type": "console/branch", "id": b.id}, "value": b.annotations}


def endpoint(e: EndpointRecord, *, host: str, region_id: str) -> JSON:
    return _drop_none(
        {
            "host": host,
            "id": e.id,
            "name": e.name,
            "project_id": e.project_id,
            "branch_id": e.branch_id,
            "region_id": region_id,
            "autoscaling_limit_min_cu": e.autoscaling_limit_min_cu,
            "autoscaling_limit_max_cu": e.autoscaling_limit_max_cu,
            "type": e.type,
            "current_state": e.current_state,
            "pooler_enabled": False,
            "pooler_mode": "transaction",
            "disabled": e.disabled,
            "passwordless_access": False,
            "creation_source": CREATION_SOURCE,
            "created_at": ts(e.created_at),
            "updated_at": ts(e.updated_at),
            "started_at": ts(e.started_at),
            "suspended_at": ts(e.suspended_at),
            "last_active": ts(e.last_active),
            "settings": e.settings,
            "proxy_host": host,
            "suspend_timeout_seconds": e.suspend_timeout_seconds,
            "provisioner": e.provisioner,
        }
    )


def role(r: RoleRecord, *, branch_id: str, with_password: bool = False) -> JSON:
    return _drop_none(
        {
            "branch_id": branch_id,
            "name": r.name,
            "password": r.password if with_password else None,
            "protected": r.protected,
            "authentication_method": "password",
            "created_at": ts(r.created_at),
            "updated_at": ts(r.updated_at),
        }
    )


def database(d: DatabaseRecord) -> JSON:
    return {
        "id": d.number,
        "branch_id": d.branch_id,
        "name": d.name,
        "owner_name": d.owner_name,
        "created_at": ts(d.created_at),
        "updated_at": ts(d.updated_at),
    }


def operation(o: OperationRecord) -> JSON:
    return _drop_none(
        {
            "id": o.id,
            "project_id": o.project_id,
            "branch_id": o.branch_id,
            "endpoint_id": o.endpoint_id,
            "action": o.action,
            "status": o.status,
            "error": o.error,
            "failures_count": o.failures_count,
            "created_at": ts(o.created_at),
            "updated_at": ts(o.updated_at),
            "total_duration_ms": o.total_duration_ms,
        }
    )


def snapshot(s: SnapshotRecord) -> JSON:
    return _drop_none(
        {
            "id": s.id,
            "name": s.name,
            "source_branch_id": s.source_branch_id,
            "created_at": ts(s.created_at),
            "expires_at": ts(s.expires_at),
            "timestamp": ts(s.timestamp),
            "lsn": s.lsn,
            "manual": s.manual,
            "full_size": s.full_size,
        }
    )


def connection_uri(*, user: str, password: str, host: str, port: int, dbname: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@{host}:{port}/{quote(dbname, safe='')}"


def proxy_connection_details(
    *, role: str, password: str, host: str, port: int, dbname: str, endpoint_id: str
) -> JSON:
    """Through the plane's proxy: Neon's names, TLS with channel binding, and the endpoint in
    `options` (Neon's way for clients without SNI; a host name `ep-....localhost` works too)."""
    uri = connection_uri(user=role, password=password, host=host, port=port, dbname=dbname)
    options = quote(f"endpoint={endpoint_id}", safe="")
    return {
        "connection_uri": f"{uri}?sslmode=require&channel_binding=require&options={options}",
        "connection_parameters": {
            "database": dbname,
            "password": password,
            "role": role,
            "host": host,
            "pooler_host": host,
            "port": port,
        },
    }


def connection_details(
    *, role_physical: str, password: str, host: str, port: int, db_physical: str
) -> JSON:
    # Role and database names in the URI are the physical ones: PostgreSQL roles are cluster-wide,
    # so every project's `neondb_owner` carries the project's suffix.
    return {
        "connection_uri": connection_uri(
            user=role_physical, password=password, host=host, port=port, dbname=db_physical
        ),
        "connection_parameters": {
            "database": db_physical,
            "password": password,
            "role": role_physical,
            "host": host,
            "pooler_host": host,
            "port": port,
        },
    }
