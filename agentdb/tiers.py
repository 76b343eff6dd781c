"""Tiers: what a user's plan gives their sessions (Neon organization, compute size, project
quotas, history retention) and caps (sessions per user, checkpoints per session).

The tiers come from the TOML file `AGENTDB_TIERS_FILE` names, else `BUILTIN_TIERS`. A file
replaces the built-in tiers entirely; its names are the only ones users can have::

    default = "free"            # the tier of users created without one (default: the first)

    [tiers.free]
    org_id = "org-free-123"     # else AGENTDB_NEON_ORG_ID
    compute_max_cu = 1          # else AGENTDB_COMPUTE_MAX_CU (and so on)
    logical_size_bytes = 536870912
    max_sessions_per_user = 10
    max_checkpoints_per_session = 50
    warm_pool_size = 2          # ready projects kept for instant creates

A value left out means "the settings' default" for compute, and "no limit" for the rest.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentdb.neon import DefaultEndpointSettings, ProjectQuota, ProjectSettings

TIER_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
#: Neon's limits for these settings.
MIN_CU, MAX_CU = 0.25, 56
MAX_SUSPEND_TIMEOUT_S = 604_800
MAX_HISTORY_RETENTION_S = 2_592_000
MAX_WARM_POOL = 100
QUOTA_FIELDS = (
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "data_transfer_bytes",
    "logical_size_bytes",
)
_MIB = 1024 * 1024
_GIB = 1024 * _MIB


class TiersError(ValueError):
    """The tiers configuration is unusable; the message names the file and the key."""


class Tier(BaseModel):
    """One plan. `None` everywhere means "not set by the tier": compute falls back to the
    settings, quotas and counts are unlimited, history retention is Neon's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TIER_NAME)
    org_id: str | None = Field(default=None, min_length=1, max_length=100)
    compute_min_cu: float | None = Field(default=None, ge=MIN_CU, le=MAX_CU)
    compute_max_cu: float | None = Field(default=None, ge=MIN_CU, le=MAX_CU)
    suspend_timeout_s: int | None = Field(default=None, ge=-1, le=MAX_SUSPEND_TIMEOUT_S)
    # Neon's per-project quotas (0 = unlimited there too).
    active_time_seconds: int | None = Field(default=None, ge=0)
    compute_time_seconds: int | None = Field(default=None, ge=0)
    written_data_bytes: int | None = Field(default=None, ge=0)
    data_transfer_bytes: int | None = Field(default=None, ge=0)
    logical_size_bytes: int | None = Field(default=None, ge=0)
    max_sessions_per_user: int | None = Field(default=None, ge=1)
    max_checkpoints_per_session: int | None = Field(default=None, ge=1)
    history_retention_seconds: int | None = Field(default=None, ge=0, le=MAX_HISTORY_RETENTION_S)
    # Ready projects kept for this tier's session creates (the warm pool); unset: the
    # settings' AGENTDB_WARM_POOL_SIZE for the default tier, none for the others.
    warm_pool_size: int | None = Field(default=None, ge=0, le=MAX_WARM_POOL)

    @model_validator(mode="after")
    def _compute_range(self) -> Tier:
        low, high = self.compute_min_cu, self.compute_max_cu
        if low is not None and high is not None and low > high:
            raise ValueError("compute_min_cu must not exceed compute_max_cu")
        return self

    def endpoint_settings(
        self, fallback: DefaultEndpointSettings | None
    ) -> DefaultEndpointSettings | None:
        """The compute settings for this tier's sessions: the tier's values over `fallback`'s
        (the settings' defaults). Raises `TiersError` when the mix leaves min above max."""
        base = fallback or DefaultEndpointSettings()
        low = base.autoscaling_limit_min_cu if self.compute_min_cu is None else self.compute_min_cu
        high = base.autoscaling_limit_max_cu if self.compute_max_cu is None else self.compute_max_cu
        if low is not None and high is not None and low > high:
            raise TiersError(
                f"tier {self.name}: its compute range with the settings' defaults is "
                f"{low}..{high} CU; set both compute_min_cu and compute_max_cu"
            )
        merged = base.model_copy(
            update={
                "autoscaling_limit_min_cu": low,
                "autoscaling_limit_max_cu": high,
                "suspend_timeout_seconds": base.suspend_timeout_seconds
                if self.suspend_timeout_s is None
                else self.suspend_timeout_s,
            }
        )
        return None if fallback is None and merged == DefaultEndpointSettings() else merged

    @property
    def quota(self) -> ProjectQuota | None:
        values = {name: getattr(self, name) for name in QUOTA_FIELDS}
        if all(value is None for value in values.values()):
            return None
        return ProjectQuota(**values)

    def quota_update(self) -> ProjectQuota:
        """The quota a session gets when it moves to this tier: every field, with 0 (Neon's
        "unlimited") where the tier sets none, so the previous tier's limits do not linger."""
        return ProjectQuota(**{name: getattr(self, name) or 0 for name in QUOTA_FIELDS})

    def project_settings(self) -> ProjectSettings | None:
        """The project `settings` to create sessions with: the quota, if the tier sets one."""
        quota = self.quota
        return None if quota is None else ProjectSettings(quota=quota)


class Tiers(BaseModel):
    """The configured tiers, and the one users get when none is given."""

    model_config = ConfigDict(frozen=True)

    tiers: tuple[Tier, ...]
    default: str

    @model_validator(mode="after")
    def _consistent(self) -> Tiers:
        names = [tier.name for tier in self.tiers]
        if not names:
            raise ValueError("at least one tier is needed")
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        if self.default not in names:
            raise ValueError(f"default tier {self.default!r} is not one of {', '.join(names)}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tier.name for tier in self.tiers)

    def find(self, name: str) -> Tier | None:
        return next((tier for tier in self.tiers if tier.name == name), None)

    def warm_pool_size(self, tier: Tier, default: int) -> int:
        """How many ready projects `tier` keeps: its own `warm_pool_size`, else `default` for
        the default tier and none for the others."""
        if tier.warm_pool_size is not None:
            return tier.warm_pool_size
        return default if tier.name == self.default else 0


#: Used when no tiers file is configured. Compute is left to the AGENTDB_COMPUTE_* settings;
#: the numbers follow Neon's plans (Free: 0.5 GB per project and 6 h of history; Launch: 7 days;
#: Scale: 30 days).
BUILTIN_TIERS = Tiers(
    default="free",
    tiers=(
        Tier(
            name="free",
            logical_size_bytes=512 * _MIB,
            max_sessions_per_user=10,
            max_checkpoints_per_session=50,
            history_retention_seconds=6 * 3600,
        ),
        Tier(
            name="pro",
            logical_size_bytes=10 * _GIB,
            max_sessions_per_user=100,
            max_checkpoints_per_session=500,
            history_retention_seconds=7 * 86_400,
        ),
        Tier(name="enterprise", history_retention_seconds=30 * 86_400),
    ),
)


def load_tiers(path: Path | None) -> Tiers:
    """The tiers in the TOML file at `path`, or `BUILTIN_TIERS` without one. Raises
    `TiersError` naming the file and the offending key."""
    if path is None:
        return BUILTIN_TIERS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TiersError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TiersError(f"{path}: not valid TOML ({error})") from None
    return parse_tiers(data, source=str(path))


def parse_tiers(data: dict[str, Any], *, source: str) -> Tiers:
    unknown = sorted(set(data) - {"default", "tiers"})
    if unknown:
        raise TiersError(f"{source}: {unknown[0]}: unknown key (expected default, [tiers.<name>])")
    tables = data.get("tiers")
    if not isinstance(tables, dict) or not tables:
        raise TiersError(f"{source}: tiers: at least one [tiers.<name>] table is needed")
    tiers = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise TiersError(f"{source}: tiers.{name}: must be a table")
        if "name" in table:
            raise TiersError(f"{source}: tiers.{name}.name: unknown key (the table names it)")
        try:
            tiers.append(Tier(name=name, **table))
        except ValidationError as error:
            raise TiersError(f"{source}: {_first_problem(error, f'tiers.{name}')}") from None
    default = data.get("default", tiers[0].name)
    try:
        return Tiers(tiers=tuple(tiers), default=default)
    except ValidationError as error:
        raise TiersError(f"{source}: {_first_problem(error, None)}") from None


def _first_problem(error: ValidationError, prefix: str | None) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "tiers")
    key = ".".join(part for part in (prefix, where) if part) or "tiers"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"


__all__ = [
    "BUILTIN_TIERS",
    "QUOTA_FIELDS",
    "Tier",
    "Tiers",
    "TiersError",
    "load_tiers",
    "parse_tiers",
]
