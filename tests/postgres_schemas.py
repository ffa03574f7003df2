"""A PostgreSQL schema of its own for a test or a module, dropped afterwards.

The server is the one CI starts (.ci/run) on 127.0.0.1:5432; set
HASHDB_TEST_POSTGRES_URL to point elsewhere. Without a server the tests skip,
except in CI (CI=true), where a missing server is a failure, not a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get(
    "HASHDB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL} ({e}); "
                    "start it or set HASHDB_TEST_POSTGRES_URL")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """Yields a database URL whose search_path is a fresh, empty schema."""
    name = f"hashdb_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
