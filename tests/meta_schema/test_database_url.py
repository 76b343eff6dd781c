"""Any libpq DSN becomes a SQLAlchemy psycopg URL, and survives alembic's ConfigParser."""

from __future__ import annotations

import sqlalchemy as sa

import meta_schema


def test_uri_keeps_every_part_and_percent_encoded_credentials():
    url = meta_schema.database_url(
        "postgresql://app%40x:p%25ss%3Aw%2Fd@127.0.0.1:5433/meta?sslmode=disable"
    )
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password) == ("app@x", "p%ss:w/d")
    assert (url.host, url.port, url.database) == ("127.0.0.1", 5433, "meta")
    assert dict(url.query) == {"sslmode": "disable"}


def test_key_value_dsn_with_a_socket_directory_keeps_the_host_in_the_query():
    url = meta_schema.database_url("host=/run/postgresql port=5432 dbname=meta user=agentdb")
    assert url.host is None
    assert dict(url.query) == {"host": "/run/postgresql", "port": "5432"}
    assert (url.username, url.database) == ("agentdb", "meta")


def test_psycopg_url_passes_through():
    dsn = "postgresql+psycopg://u:p@db.example:5432/meta"
    assert meta_schema.database_url(dsn) == sa.make_url(dsn)


def test_alembic_config_round_trips_a_password_with_percent_signs():
    config = meta_schema.alembic_config("postgresql://u:100%25%20sure@localhost/meta")
    stored = config.get_main_option("sqlalchemy.url")
    assert stored is not None
    assert sa.make_url(stored).password == "100% sure"
    assert config.get_main_option("script_location", "").endswith("migrations")
