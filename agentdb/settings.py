"""agentdb's settings: one pydantic-settings class, read from `AGENTDB_*` environment variables.

Nothing else in agentdb reads `os.environ`. Every setting has a default that runs agentdb on the
embedded PostgreSQL and the local control plane.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    # Under root the embedded PostgreSQL runs as an unprivileged user, who could not traverse
    # root's home; a service's conventional place is /var/lib.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/agentdb")
    return Path(platformdirs.user_data_dir("agentdb", appauthor=False))


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
    localplane_faults: str = Field(
        default="",
        description="Local-plane fault injection, e.g. '423=0.2,429=0.1,500=0.05,latency_ms=50'.",
    )
    localplane_operation_delay_ms: int = Field(
        default=0,
        ge=0,
        description="Extra time each local-plane operation stays 'running'.",
    )
