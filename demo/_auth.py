"""Who may use the demo: a person signs in once with an agentdb admin or user token (checked by
agentdb's token service, as the REST API checks it), or a client sends that token as a bearer
header on every request. A session token never opens the demo: it is what an agent holds.

A sign-in is a random id in an HttpOnly, SameSite=Strict cookie; the token it stands for stays in
the server's memory and is checked again on every request, so a revoked or expired token, or a
disabled user, ends the sign-in at once. Failed sign-ins and bearer tokens are throttled per
client address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from agentdb.services import Principal
from agentdb.settings import Settings
from meta_schema import TokenScope

SIGN_IN_COOKIE = "agentdb_demo_sign_in"
SIGN_IN_TTL = timedelta(hours=12)
#: Sign-ins kept at once; past it the oldest is forgotten (it signs in again).
MAX_SIGN_INS = 100
#: Failed sign-ins one client address may make per window before it must wait.
MAX_FAILURES = 10
FAILURE_WINDOW = timedelta(minutes=1)

Authenticate = Callable[[str], Awaitable[Principal | None]]
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class SignInRequired(Exception):  # noqa: N818 - a state: the request is not signed in
    """The request carries no valid sign-in or token; the message says what to send."""


class TooManyFailures(Exception):  # noqa: N818 - a state, read as "too many failed sign-ins"
    """This client failed to sign in too often; `retry_after` seconds until it may try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s")
        self.retry_after = retry_after


class CrossSite(Exception):  # noqa: N818 - a state: the request came from another site
    """A state-changing request whose Origin is not the demo's own (a forged request)."""


@dataclass
class _SignIn:
    token: SecretStr
    expires_at: datetime


@dataclass
class _Failures:
    times: list[datetime] = field(default_factory=list)


class SignIns:
    """The demo's sign-ins, kept in memory (a restart signs everyone out)."""

    def __init__(
        self, authenticate: Authenticate, *, ttl: timedelta = SIGN_IN_TTL, clock: Clock = _now
    ) -> None:
        self._authenticate = authenticate
        self._ttl = ttl
        self._clock = clock
        # Keyed by the cookie's hash: what is kept in memory does not sign anyone in.
        self._sign_ins: dict[str, _SignIn] = {}
        self._failures: dict[str, _Failures] = {}

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    async def check_token(self, token: str) -> Principal | None:
        """The principal of an admin or user token; None for anything else (unknown, revoked,
        expired, a session token)."""
        principal = await self._authenticate(token)
        if principal is None or principal.scope == TokenScope.SESSION:
            return None
        return principal

    async def check_bearer(self, token: str, client: str) -> Principal | None:
        """`check_token` for a request from `client`, whose failures count: raises
        `TooManyFailures` when it failed too often lately."""
        self._throttle(client)
        principal = await self.check_token(token)
        if principal is None:
            self._failures.setdefault(client, _Failures()).times.append(self._clock())
        else:
            self._failures.pop(client, None)
        return principal

    async def sign_in(self, token: str, client: str) -> str | None:
        """A new sign-in's cookie value, or None when the token does not open the demo.
        Raises `TooManyFailures` when `client` failed too often lately."""
        if await self.check_bearer(token, client) is None:
            return None
        while len(self._sign_ins) >= MAX_SIGN_INS:
            oldest = min(self._sign_ins, key=lambda k: self._sign_ins[k].expires_at)
            del self._sign_ins[oldest]
        cookie = secrets.token_urlsafe(32)
        self._sign_ins[_key(cookie)] = _SignIn(SecretStr(token), self._clock() + self._ttl)
        return cookie

    async def principal(self, cookie: str) -> Principal | None:
        """Who the sign-in cookie stands for, if it is still good; a bad one is forgotten."""
        key = _key(cookie)
        found = self._sign_ins.get(key)
        if found is None:
            return None
        if found.expires_at <= self._clock():
            del self._sign_ins[key]
            return None
        principal = await self.check_token(found.token.get_secret_value())
        if principal is None:
            self._sign_ins.pop(key, None)
        return principal

    def sign_out(self, cookie: str) -> None:
        self._sign_ins.pop(_key(cookie), None)

    def __len__(self) -> int:
        return len(self._sign_ins)

    def _throttle(self, client: str) -> None:
        now = self._clock()
        for address in list(self._failures):
            times = [t for t in self._failures[address].times if now - t < FAILURE_WINDOW]
            if times:
                self._failures[address].times = times
            else:
                del self._failures[address]
        failed = self._failures.get(client)
        if failed is not None and len(failed.times) >= MAX_FAILURES:
            wait = FAILURE_WINDOW - (now - failed.times[0])
            raise TooManyFailures(max(1, int(wait.total_seconds()) + 1))


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


# --- where the demo may listen ---------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one ("" and 0.0.0.0 are not)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found
    )


def listen_refusal(host: str, settings: Settings) -> str | None:
    """Why the demo must not listen on `host`, or None. On a loopback address it may (a
    sign-in is still needed). Beyond it, only when the operator configured
    AGENTDB_ADMIN_TOKEN: the token to sign in with is then one they chose and hold, not a
    generated one printed once into a server's log."""
    if is_loopback(host) or settings.admin_token is not None:
        return None
    return (
        f"the chat demo does not listen on {host or 'every interface'} (not a loopback address) "
        "without AGENTDB_ADMIN_TOKEN: set it to sign in with, or listen on 127.0.0.1"
    )
