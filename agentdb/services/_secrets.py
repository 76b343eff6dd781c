"""Encryption at rest for connection secrets: a Fernet key from settings, never shown."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from ._errors import ServiceError


class SecretDecryptionFailed(ServiceError):  # noqa: N818
    """A stored secret cannot be read with this key (wrong key, or a corrupted value)."""


class Secrets:
    """Encrypts and decrypts short strings (connection URIs) with one Fernet key.

    Neither the key nor any plaintext ever appears in a repr, str or error message.
    """

    __slots__ = ("_fernet",)

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            # Fernet's own message is harmless, but the traceback would carry the key.
            raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes)") from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken:
            raise SecretDecryptionFailed(
                "stored secret cannot be decrypted with this key"
            ) from None

    def __repr__(self) -> str:
        return "Secrets(key='**********')"

    __str__ = __repr__
