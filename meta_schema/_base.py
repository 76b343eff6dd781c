"""What every meta table shares: its own registry and MetaData (with constraint names that
migrations can rely on), time-ordered uuid ids, UTC clocks and enums stored as checked text."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

# Stable, predictable names: a later migration can drop or alter a constraint by name without
# reflecting the database first.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# A registry of its own, not SQLModel's global one, so that no other SQLModel table in the
# process ever reaches the meta DB's migrations or their autogenerate comparison.
META_REGISTRY = registry(metadata=sa.MetaData(naming_convention=NAMING_CONVENTION))


class TableModel(SQLModel, registry=META_REGISTRY):
    """Base of every meta table class."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds then 74 random bits, so new rows land
    near the end of the primary-key index and ids sort by creation time to the millisecond
    (Python 3.11 has no `uuid.uuid7`)."""
    milliseconds = time.time_ns() // 1_000_000
    random = secrets.randbits(74)
    value = (
        (milliseconds & (2**48 - 1)) << 80
        | 0x7 << 76  # version
        | (random >> 62) << 64  # 12 random bits
        | 0b10 << 62  # variant
        | (random & (2**62 - 1))
    )
    return uuid.UUID(int=value)


E = TypeVar("E", bound=StrEnum)


class EnumText(sa.types.TypeDecorator[E]):
    """A `StrEnum` stored as its value in a TEXT column; the allowed values are enforced by a
    CHECK constraint (`one_of`), not a native Postgres enum, which cannot drop a value and
    needs its own migration dance to add one."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        del dialect
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        del dialect
        return None if value is None else self.enum(value)


def one_of(column: str, enum: type[StrEnum]) -> sa.CheckConstraint:
    """CHECK `column IN (values of enum)`, named `ck_<table>_<column>`."""
    return sa.CheckConstraint(sa.column(column).in_([member.value for member in enum]), name=column)
