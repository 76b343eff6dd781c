"""agentdb's local control plane: the subset of Neon's API v2 that agentdb uses, served over an
embedded PostgreSQL, for offline use and as Neon's stand-in in every test.

It imports nothing from agentdb's services or meta schema and could ship alone.
"""

from ._app import ADDON_PATHS, create_app, tls_files
from ._faults import Faults
from ._lifespan import running
from ._plane import LocalPlane

__all__ = ["ADDON_PATHS", "Faults", "LocalPlane", "create_app", "running", "tls_files"]
