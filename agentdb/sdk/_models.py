"""What the SDK returns: the REST API's own answer models, so both modes agree field by field."""

from agentdb.api._models import AuthOut as Auth
from agentdb.api._models import BranchOut as Branch
from agentdb.api._models import CheckpointList as CheckpointTree
from agentdb.api._models import SessionOut as Session
from agentdb.api._models import TokenOut as Token
from agentdb.services import AuthUserView as AuthUser
from agentdb.services import CheckpointView as Checkpoint
from agentdb.services import DataApiView as DataApi
from agentdb.services import DiffView as Diff
from agentdb.services import EventView as Event
from agentdb.services import OAuthProviderView as OAuthProvider
from agentdb.services import SqlResult
from agentdb.services import TierChangeView as TierChange
from agentdb.services import TokenView as TokenInfo
from agentdb.services import UsageReport as Usage
from agentdb.services import UserView as User

__all__ = [
    "Auth",
    "AuthUser",
    "Branch",
    "Checkpoint",
    "CheckpointTree",
    "DataApi",
    "Diff",
    "Event",
    "OAuthProvider",
    "Session",
    "SqlResult",
    "TierChange",
    "Token",
    "TokenInfo",
    "Usage",
    "User",
]
