"""agentdb's REST API (`/v1`, Litestar): thin handlers over the services, bearer tokens,
RFC 9457 problem+json errors and `Idempotency-Key` on POSTs. Its request and response models
are the wire vocabulary (`agentdb.wire`), which clients share without loading this package."""

from ._addon_paths import with_addons
from ._app import create_app

__all__ = ["create_app", "with_addons"]
