"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as PostgreSQL speaks them, for
the connection proxy: the server side for clients, the client side towards PostgreSQL.

Written here rather than taken from `scramp`: libpq sends an empty user name (`n=,r=...`;
PostgreSQL takes the user from the startup packet), which `scramp`'s server refuses as
malformed, and `scramp` ships no type information. The primitives are the standard library's
(`hashlib.pbkdf2_hmac`, `hmac`), and every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

ITERATIONS = 4096  # PostgreSQL's default scram_iterations
PLUS = "SCRAM-SHA-256-PLUS"
PLAIN = "SCRAM-SHA-256"
_BINDING = "tls-server-end-point"


class ScramError(Exception):
    """The client's messages are malformed, or its proof or channel binding is wrong."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """What a server keeps of a password (PostgreSQL's `SCRAM-SHA-256$...` secret)."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(cls, password: str, iterations: int = ITERATIONS) -> Verifier:
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(
            salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")
        )


@dataclass(slots=True)
class Exchange:
    """One authentication: `first(client_first)` answers the server-first message,
    `final(client_final)` checks the proof and answers the server-final message.
    `end_point` is the TLS channel-binding data; None when the connection has no TLS."""

    mechanism: str
    verifier: Verifier
    end_point: bytes | None
    _nonce: str = ""
    _header: bytes = b""
    _client_bare: str = ""
    _server_first: str = ""

    def first(self, client_first: str) -> str:
        if self.mechanism not in {PLAIN, PLUS}:
            raise ScramError(f"unsupported SASL mechanism {self.mechanism!r}")
        flag, _, rest = client_first.partition(",")
        authzid, _, bare = rest.partition(",")
        if authzid:
            raise ScramError("an authorization identity is not supported")
        if flag.startswith("p="):
            if flag != f"p={_BINDING}" or self.end_point is None or self.mechanism != PLUS:
                raise ScramError("unsupported channel binding")
        elif flag == "y":
            if self.end_point is not None:
                # The client thinks the server cannot bind, though it offered PLUS: a downgrade.
                raise ScramError("channel binding is supported and must be used")
        elif flag != "n" or self.mechanism == PLUS:
            raise ScramError("malformed GS2 header")
        attributes = _attributes(bare)
        client_nonce = attributes.get("r", "")
        if not client_nonce or "n" not in attributes:
            raise ScramError("malformed client-first message")
        self._header = f"{flag},,".encode()
        self._client_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        without_proof, _, proof_part = client_final.rpartition(",p=")
        attributes = _attributes(without_proof)
        bound = self._header.startswith(b"p=")
        binding = self._header + ((self.end_point or b"") if bound else b"")
        if not hmac.compare_digest(
            attributes.get("c", "").encode(), base64.b64encode(binding)
        ) or not hmac.compare_digest(attributes.get("r", "").encode(), self._nonce.encode()):
            raise ScramError("channel binding or nonce does not match")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ScramError("malformed proof") from None
        auth_message = f"{self._client_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("wrong proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramError("wrong proof")
        server_signature = _hmac(self.verifier.server_key, auth_message)
        return "v=" + base64.b64encode(server_signature).decode()


@dataclass(slots=True)
class Client:
    """Logs in to PostgreSQL: `first()` is the client-first message, `final(server_first)` the
    client-final one, `verify(server_final)` checks the server knew the password too."""

    password: str = field(repr=False)
    _nonce: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(18)).decode())
    _auth_message: bytes = b""
    _server_key: bytes = field(default=b"", repr=False)

    def first(self) -> str:
        return f"n,,n=,r={self._nonce}"

    def final(self, server_first: str) -> str:
        attributes = _attributes(server_first)
        nonce = attributes.get("r", "")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("the server's nonce does not extend the client's")
        try:
            salt = base64.b64decode(attributes["s"], validate=True)
            iterations = int(attributes["i"])
        except (KeyError, ValueError):
            raise ScramError("malformed server-first message") from None
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"n=,r={self._nonce},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_key = _hmac(salted, b"Server Key")
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify(self, server_final: str) -> None:
        expected = base64.b64encode(_hmac(self._server_key, self._auth_message))
        if not hmac.compare_digest(_attributes(server_final).get("v", "").encode(), expected):
            raise ScramError("the server's signature is wrong")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(message: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for part in message.split(","):
        name, equals, value = part.partition("=")
        if len(name) != 1 or not equals:
            raise ScramError("malformed SCRAM message")
        attributes.setdefault(name, value)
    return attributes
