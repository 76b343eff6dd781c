"""agentdb's domain services over the meta DB and the Neon client: users and their tokens,
agent sessions, checkpoints, branches, SQL, tier changes, usage, the audit log, the reconciler
and the background job runner. The REST API, MCP tools and CLI call these; none of them talk to
Neon directly."""

from agentdb.wire import (
    AuthUserView,
    AuthView,
    BranchView,
    CheckpointTree,
    CheckpointView,
    DataApiView,
    DiffView,
    OAuthProviderView,
    SessionView,
)

from ._common import (
    MAX_PAGE,
    Actor,
    Clock,
    SessionGate,
    SessionLocks,
    WorkflowKillSwitch,
    system_clock,
)
from ._errors import (
    AlreadyExists,
    BranchNotFound,
    CheckpointNotFound,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    LimitExceeded,
    NotFound,
    QuotaExceeded,
    ServiceError,
    SessionBusy,
    SessionNotFound,
    SqlFailed,
    TokenNotFound,
    UserNotFound,
)
from ._secrets import SecretDecryptionFailed, Secrets
from .addons import AddonService
from .branches import BranchService
from .catalog import CatalogService
from .checkpoints import CheckpointService
from .credentials import CredentialService
from .events import EventService, EventView
from .fleet import FleetMigrationService, MigrationNotFound
from .idempotency import IdempotencyService
from .jobs import JobRunner, JobStatus
from .lease import ProcessLease
from .readiness import Readiness, ReadinessReport
from .reconcile import Reconciler, ReconcileReport
from .sessions import SessionService, project_name, project_spec
from .sql import IdleConnections, ReadPace, SqlColumn, SqlResult, SqlService
from .tier_changes import TierChangeNotFound, TierChangeService, TierChangeView
from .tokens import IssuedToken, Principal, TokenService, TokenView
from .usage import MetricUsage, PeriodUsage, PollResult, UsageReport, UsageService
from .users import UserService, UserView
from .warm_pool import FillReport, PoolKey, WarmPool

__all__ = [
    "MAX_PAGE",
    "Actor",
    "AddonService",
    "AlreadyExists",
    "AuthUserView",
    "AuthView",
    "BranchNotFound",
    "BranchService",
    "BranchView",
    "CatalogService",
    "CheckpointNotFound",
    "CheckpointService",
    "CheckpointTree",
    "CheckpointView",
    "Clock",
    "Conflict",
    "ControlPlaneFailed",
    "CredentialService",
    "DataApiView",
    "DiffView",
    "EventService",
    "EventView",
    "FillReport",
    "FleetMigrationService",
    "IdempotencyService",
    "IdleConnections",
    "InvalidInput",
    "IssuedToken",
    "JobRunner",
    "JobStatus",
    "LimitExceeded",
    "MetricUsage",
    "MigrationNotFound",
    "NotFound",
    "OAuthProviderView",
    "PeriodUsage",
    "PollResult",
    "PoolKey",
    "Principal",
    "ProcessLease",
    "QuotaExceeded",
    "ReadPace",
    "Readiness",
    "ReadinessReport",
    "ReconcileReport",
    "Reconciler",
    "SecretDecryptionFailed",
    "Secrets",
    "ServiceError",
    "SessionBusy",
    "SessionGate",
    "SessionLocks",
    "SessionNotFound",
    "SessionService",
    "SessionView",
    "SqlColumn",
    "SqlFailed",
    "SqlResult",
    "SqlService",
    "TierChangeNotFound",
    "TierChangeService",
    "TierChangeView",
    "TokenNotFound",
    "TokenService",
    "TokenView",
    "UsageReport",
    "UsageService",
    "UserNotFound",
    "UserService",
    "UserView",
    "WarmPool",
    "WorkflowKillSwitch",
    "project_name",
    "project_spec",
    "system_clock",
]
