"""Typed Neon objects beyond a project's own resources: Neon Auth, the Data API, consumption
history and organizations. Same rules as `_models`: unknown fields and enum values pass,
secrets are `SecretStr`."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, SecretStr, model_validator

from ._models import NeonModel, lift_pagination

# --- Neon Auth (per branch) -------------------------------------------------------------------


class NeonAuthCreated(NeonModel):
    """`POST .../branches/{id}/auth`. For `better_auth`, `base_url` is what the SDK needs; the
    key fields date from Stack Auth."""

    auth_provider: str  # better_auth | stack | mock
    auth_provider_project_id: str
    jwks_url: str
    schema_name: str | None = None
    table_name: str | None = None
    base_url: str | None = None
    pub_client_key: SecretStr | None = None
    secret_server_key: SecretStr | None = None


class NeonAuth(NeonModel):
    """`GET .../branches/{id}/auth`: the integration enabled on a branch."""

    auth_provider: str
    auth_provider_project_id: str
    branch_id: str
    db_name: str
    jwks_url: str
    owned_by: str | None = None  # user | neon
    transfer_status: str | None = None
    base_url: str | None = None
    name: str | None = None
    created_at: datetime | None = None


class OAuthProvider(NeonModel):
    """An OAuth provider of a branch's Neon Auth; without credentials Neon's shared keys."""

    id: str  # google | github | microsoft | vercel
    type: str | None = None  # standard | shared
    client_id: str | None = None
    client_secret: SecretStr | None = None


# --- Data API ---------------------------------------------------------------------------------


class DataAPISettings(NeonModel):
    """PostgREST-style settings; `db_schemas` defaults to ["public"]."""

    db_aggregates_enabled: bool | None = None
    db_anon_role: str | None = None
    db_extra_search_path: str | None = None
    db_max_rows: int | None = None
    db_schemas: list[str] | None = None
    jwt_role_claim_key: str | None = None
    jwt_cache_max_lifetime: int | None = None
    openapi_mode: str | None = None
    server_cors_allowed_origins: str | None = None
    server_timing_enabled: bool | None = None


class DataAPI(NeonModel):
    url: str
    status: str | None = None
    settings: DataAPISettings | None = None
    available_schemas: list[str] | None = None


# --- consumption --------------------------------------------------------------------------------


class MetricValue(NeonModel):
    metric_name: str
    value: int


class ConsumptionTimeframe(NeonModel):
    timeframe_start: datetime | None = None
    timeframe_end: datetime | None = None
    metrics: list[MetricValue] = Field(default_factory=list)


class ConsumptionPeriod(NeonModel):
    period_id: str
    period_plan: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    consumption: list[ConsumptionTimeframe] = Field(default_factory=list)


class ProjectConsumption(NeonModel):
    project_id: str
    periods: list[ConsumptionPeriod] = Field(default_factory=list)


class ConsumptionPage(NeonModel):
    projects: list[ProjectConsumption]
    cursor: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        return lift_pagination(data, "cursor")


class LegacyConsumptionTimeframe(NeonModel):
    """A timeframe of the legacy endpoint: metrics are top-level fields (numbers that do not
    match usage-based invoices)."""

    timeframe_start: datetime | None = None
    timeframe_end: datetime | None = None
    active_time_seconds: int | None = None
    compute_time_seconds: int | None = None
    written_data_bytes: int | None = None
    synthetic_storage_size_bytes: int | None = None
    data_storage_bytes_hour: int | None = None
    logical_size_bytes: int | None = None
    logical_size_bytes_hour: int | None = None


class LegacyConsumptionPeriod(NeonModel):
    period_id: str
    period_plan: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    consumption: list[LegacyConsumptionTimeframe] = Field(default_factory=list)


class LegacyProjectConsumption(NeonModel):
    project_id: str
    periods: list[LegacyConsumptionPeriod] = Field(default_factory=list)


class LegacyConsumptionPage(NeonModel):
    projects: list[LegacyProjectConsumption]
    cursor: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        return lift_pagination(data, "cursor")


# --- organizations ------------------------------------------------------------------------------


class Organization(NeonModel):
    id: str
    name: str
    handle: str | None = None
    plan: str | None = None
    managed_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    allow_hipaa_projects: bool | None = None
    require_mfa: bool | None = None
