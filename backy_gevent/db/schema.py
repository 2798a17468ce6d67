"""Numbered migrations for one jobs table: apply the missing ones, report the version.

Migrations are the files ``sql/migrations/NNNN_name.sql``. Each is applied once, in its
own transaction, and recorded in ``<table>_migrations``; a transaction-level advisory lock
keyed on the table name lets several processes run ``setup`` at once safely.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from backy_gevent.db.queries import SQL_DIRECTORY, object_names

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """All migrations shipped with the package, in order."""
    found = []
    directory = os.path.join(SQL_DIRECTORY, "migrations")
    for name in os.listdir(directory):
        match = _MIGRATION_FILE.match(name)
        if match:
            with open(os.path.join(directory, name), encoding="utf-8") as file:
                found.append(Migration(int(match[1]), match[2], file.read()))
    return sorted(found, key=lambda m: m.version)


def _lock_key(table_name: str) -> sql.Composed:
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(
        sql.Literal("backy-gevent setup " + table_name)
    )


def applied_versions(conn: Any, table_name: str) -> set[int]:
    """Versions already applied to this table; empty when the schema isn't there."""
    names = object_names(table_name)
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute("SELECT to_regclass(%s)", (names["migrations"].as_string(conn),))
        if cur.fetchone()[0] is None:
            return set()
        cur.execute(sql.SQL("SELECT version FROM {}").format(names["migrations"]))
        return {row[0] for row in cur.fetchall()}


def pending(conn: Any, table_name: str) -> list[Migration]:
    """Migrations not yet applied to this table."""
    done = applied_versions(conn, table_name)
    conn.rollback()
    return [m for m in migrations() if m.version not in done]


def migrate(conn: Any, table_name: str) -> list[Migration]:
    """Apply every missing migration; return those applied (empty: already up to date).

    Idempotent and safe to run from several processes at once.
    """
    names = object_names(table_name)
    applied: list[Migration] = []
    for migration in migrations():
        # One transaction per migration.
        with conn, conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            cur.execute(_lock_key(table_name))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(names["migrations"])
            )
            cur.execute(
                sql.SQL("SELECT 1 FROM {} WHERE version = %s").format(names["migrations"]),
                (migration.version,),
            )
            if cur.fetchone():
                continue
            cur.execute(sql.SQL(migration.text).format(**names))
            cur.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                    names["migrations"]
                ),
                (migration.version, migration.name),
            )
            applied.append(migration)
    return applied
