"""What the SDK returns: the REST API's own answer models, so both modes agree field by field."""

from agentdb.wire import AuthOut as Auth
from agentdb.wire import AuthUserView as AuthUser
from agentdb.wire import BranchOut as Branch
from agentdb.wire import CheckpointList as CheckpointTree
from agentdb.wire import CheckpointView as Checkpoint
from agentdb.wire import DataApiView as DataApi
from agentdb.wire import DiffView as Diff
from agentdb.wire import EventView as Event
from agentdb.wire import ExtensionView as Extension
from agentdb.wire import FleetMigrationResultView as MigrationResult
from agentdb.wire import FleetMigrationView as Migration
from agentdb.wire import MigrationCounts, MigrationRollout, MigrationTarget, SqlResult
from agentdb.wire import OAuthProviderView as OAuthProvider
from agentdb.wire import RoleOut as Role
from agentdb.wire import SessionOut as Session
from agentdb.wire import TierChangeView as TierChange
from agentdb.wire import TokenOut as Token
from agentdb.wire import TokenView as TokenInfo
from agentdb.wire import UsageReport as Usage
from agentdb.wire import UserView as User

__all__ = [
    "Auth",
    "AuthUser",
    "Branch",
    "Checkpoint",
    "CheckpointTree",
    "DataApi",
    "Diff",
    "Event",
    "Extension",
    "Migration",
    "MigrationCounts",
    "MigrationResult",
    "MigrationRollout",
    "MigrationTarget",
    "OAuthProvider",
    "Role",
    "Session",
    "SqlResult",
    "TierChange",
    "Token",
    "TokenInfo",
    "Usage",
    "User",
]
