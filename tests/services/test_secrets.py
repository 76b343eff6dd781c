"""Secrets: Fernet at rest, with nothing readable in reprs."""

from __future__ import annotations

import pytest

from agentdb.services import SecretDecryptionFailed, Secrets


def test_round_trip_and_ciphertext_hides_the_plaintext() -> None:
    key = Secrets.generate_key()
    box = Secrets(key)
    token = box.encrypt("postgresql://agent:hunter2@host/app")
    assert b"hunter2" not in token
    assert box.decrypt(token) == "postgresql://agent:hunter2@host/app"


def test_repr_shows_neither_key_nor_plaintext() -> None:
    key = Secrets.generate_key()
    box = Secrets(key)
    assert key not in repr(box)
    assert key not in str(box)


def test_wrong_key_fails_without_leaking() -> None:
    token = Secrets(Secrets.generate_key()).encrypt("s3cret")
    with pytest.raises(SecretDecryptionFailed) as raised:
        Secrets(Secrets.generate_key()).decrypt(token)
    assert "s3cret" not in str(raised.value)


def test_bad_key_message_does_not_echo_it() -> None:
    with pytest.raises(ValueError, match="not a Fernet key") as raised:
        Secrets("not-a-key-but-maybe-a-secret")
    assert "maybe-a-secret" not in str(raised.value)
    assert raised.value.__cause__ is None
