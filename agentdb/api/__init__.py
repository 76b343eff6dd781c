"""agentdb's REST API (`/v1`, Litestar): thin handlers over the services, bearer tokens,
RFC 9457 problem+json errors and `Idempotency-Key` on POSTs."""

import typing

if typing.TYPE_CHECKING:
    from ._app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> typing.Any:  # noqa: ANN401
    # Loaded on first use, so that importing the wire models (`agentdb.api._models`, which the
    # SDK shares) does not load the server.
    if name == "create_app":
        from ._app import create_app  # noqa: PLC0415

        return create_app
    raise AttributeError(name)
