"""Two costs every test paid that say nothing about the product (profiled: docs/benchmarks.md § Test suite time).

1. After each transactional test (every live-server test), Django flushes the database and re-sends
   post_migrate: content types and ~200 permissions recreated row by row, and a new 2048-bit tool key
   generated — about a second per test on this machine. Here the first flush of the run does that for
   real, adds the staff groups the migrations made (a plain flush loses them), and keeps a copy of the
   rows in the four auth/contenttype tables;
   later flushes put those rows back in four bulk INSERTs with the same ids, and then make the signing
   key the same way `migrate` does (`institutions.keys.ensure_signing_key`).
2. RSA key generation (tool keys, sandbox platform keys, test forgers) costs 50–500 ms a key. Inside a
   test, keys come from a pool generated once per run: distinct within a test, reused across tests.
   Keys made outside a test (module constants, module- and session-scoped fixtures) stay fresh, so a
   test's own keys can never equal one that outlives it.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import sql as management_sql
from django.core.management.commands import flush as flush_command
from django.db import connections

# --- 1. post_migrate after a flush, from a copy ---------------------------------------------------

CLEAN_TABLES = ("django_content_type", "auth_permission", "auth_group", "auth_group_permissions")
_clean_rows: dict[str, list[tuple[str, list[str], list[tuple]]]] = {}


def _copy_clean_rows(alias: str) -> list[tuple[str, list[str], list[tuple]]]:
    copied = []
    with connections[alias].cursor() as cursor:
        for table in CLEAN_TABLES:
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 (fixed table names)
            columns = [column[0] for column in cursor.description]
            copied.append((table, columns, cursor.fetchall()))
    return copied


def _put_back(alias: str, copied: list[tuple[str, list[str], list[tuple]]]) -> None:
    connection = connections[alias]
    with connection.cursor() as cursor:
        for table, columns, rows in copied:
            if rows:
                names = ", ".join(connection.ops.quote_name(c) for c in columns)
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)  # noqa: S608


def emit_post_migrate_from_copy(verbosity: int, interactive: bool, db: str, **kwargs: Any) -> None:
    from django.apps import apps
    from django.contrib.contenttypes.models import ContentType

    from institutions.keys import ensure_signing_key
    from institutions.roles import sync_staff_roles

    copied = _clean_rows.get(db)
    if copied is None:
        management_sql.emit_post_migrate_signal(verbosity, interactive, db, **kwargs)
        # The staff groups, as migration institutions 0002 made them: a flush would otherwise leave the
        # next tests (whichever order xdist gives them) without the roles the migrated database had.
        sync_staff_roles(apps)
        _clean_rows[db] = _copy_clean_rows(db)
        return
    _put_back(db, copied)
    ContentType.objects.clear_cache()
    # Between two tests the signing key is always the same one, never one a test gets from the pool.
    global _between_tests
    _between_tests = True
    try:
        ensure_signing_key(apps)
    finally:
        _between_tests = False


def install_fast_flush() -> None:
    flush_command.emit_post_migrate_signal = emit_post_migrate_from_copy


# --- 2. RSA keys from a pool inside a test ---------------------------------------------------------

_generate_private_key = rsa.generate_private_key
_pool: dict[tuple[int, int], list[Any]] = {}
_cursor: dict[tuple[int, int], int] | None = None  # None: not inside a test, keys are generated fresh


_between_tests = False
_between_tests_keys: dict[tuple[int, int], Any] = {}


def pooled_generate_private_key(public_exponent: int, key_size: int, backend: Any = None) -> Any:
    if _between_tests:
        kind = (public_exponent, key_size)
        if kind not in _between_tests_keys:
            _between_tests_keys[kind] = _generate_private_key(public_exponent, key_size)
        return _between_tests_keys[kind]
    if _cursor is None:
        return _generate_private_key(public_exponent, key_size)
    kind = (public_exponent, key_size)
    keys = _pool.setdefault(kind, [])
    index = _cursor.get(kind, 0)
    _cursor[kind] = index + 1
    if index == len(keys):
        keys.append(_generate_private_key(public_exponent, key_size))
    return keys[index]


def install_key_pool() -> None:
    rsa.generate_private_key = pooled_generate_private_key


def start_test() -> None:
    global _cursor
    _cursor = {}


def end_test() -> None:
    global _cursor
    _cursor = None
