"""The named SQL statements of ``sql/queries.sql``, with identifiers quoted for one table."""

from __future__ import annotations

import functools
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import psycopg2.errors
from psycopg2 import sql

from backy_gevent.db.arrays import with_array_literals

#: The name of every block of queries.sql, so that mypy checks each name a caller uses
#: (a test checks that this list and the file agree).
Statement = Literal[
    "insert_jobs", "insert_job", "insert_job_now", "insert_job_now_quiet",
    "insert_unique_jobs", "get_unique", "claim",
    "claim_one", "quiet_enqueues", "follow_lock",
    "start_following", "end_quiet", "lock_limited",
    "claim_limited", "complete_delete", "complete_keep", "fail", "snooze", "give_up",
    "hand_back", "touch", "catch_up", "lead", "cancel", "retry", "retry_failed", "table_oid",
    "get_job", "prune", "count_prunable", "prune_batch", "stats", "queue_stats",
    "set_statement_timeout", "beat", "forget_runners", "vacuum",
    "unregister_runner", "list_runners",
    "delete_jobs", "pause_queue", "resume_queue", "paused_queues", "web_queue_counts",
    "web_oldest_waiting", "web_last_hour", "web_table_rows", "web_jobs",
    "web_jobs_in_state", "web_jobs_examined", "web_jobs_examined_in_state",
    # periodic jobs (cron)
    "cron_sync", "cron_forget", "cron_schedules", "cron_tick",
]
STATEMENTS: tuple[str, ...] = get_args(Statement)
#: The runner's claims and outcomes: work it redoes after a crash anyway (delivery is at
#: least once), so with ``relaxed_commits`` they commit without waiting for the WAL flush.
#: Enqueues, cancels, retries and the rest stay durable.
RELAXABLE: frozenset[str] = frozenset({
    "claim", "claim_one", "lock_limited", "claim_limited", "complete_delete", "complete_keep",
    "fail", "snooze", "give_up", "hand_back", "touch",
})
_RELAX = "SET LOCAL synchronous_commit TO off"

_BLOCK = re.compile(r"^-- name: (\w+)\n", re.MULTILINE)
#: A named placeholder and the cast that follows it, if any: %(ids)s::bigint[]
_PLACEHOLDER = re.compile(r"%\((\w+)\)s(::\w+(?:\[\])?)?")


#: The package's SQL files (read by path: importlib.resources costs a one-shot command
#: more start-up time than the read itself).
SQL_DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sql")


@functools.cache
def _read_blocks() -> dict[str, str]:
    with open(os.path.join(SQL_DIRECTORY, "queries.sql"), encoding="utf-8") as file:
        text = file.read()
    parts = _BLOCK.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def object_names(table_name: str) -> dict[str, sql.Identifier]:
    """Every database object the schema needs, each named after the jobs table."""
    return {
        "table": sql.Identifier(table_name),
        "runners": sql.Identifier(f"{table_name}_runners"),
        "leader": sql.Identifier(f"{table_name}_leader"),
        "starts": sql.Identifier(f"{table_name}_starts"),
        "starts_index": sql.Identifier(f"{table_name}_starts_idx"),
        "queues": sql.Identifier(f"{table_name}_queues"),
        "cron": sql.Identifier(f"{table_name}_cron"),
        "migrations": sql.Identifier(f"{table_name}_migrations"),
        "fetch_index": sql.Identifier(f"{table_name}_fetch_idx"),
        "lease_index": sql.Identifier(f"{table_name}_lease_idx"),
        "failed_index": sql.Identifier(f"{table_name}_failed_idx"),
        "finished_index": sql.Identifier(f"{table_name}_finished_idx"),
        "unique_index": sql.Identifier(f"{table_name}_unique_key_idx"),
        "unique_recent_index": sql.Identifier(f"{table_name}_unique_recent_idx"),
        "running_has_lease": sql.Identifier(f"{table_name}_running_has_lease"),
        "state_index": sql.Identifier(f"{table_name}_state_idx"),
    }


def channel_name(table_oid: int) -> str:
    """The LISTEN/NOTIFY channel of one jobs table, named after the table's oid.

    The statements that notify name it from their rows' ``tableoid`` (see queries.sql), so
    same-named tables in other schemas have channels of their own.
    """
    return f"backy_{table_oid}"


class Queries:
    """The statements of queries.sql, composed for one jobs table.

    ``execute(cur, "claim", params)`` runs one (prepared where the connection allows);
    ``composed("claim")`` is its ``psycopg2.sql.Composed`` text. With
    ``relaxed_commits`` the transactions of the ``RELAXABLE`` statements don't wait for
    the WAL flush (``SET LOCAL``, so nothing outlives them, behind a pooler too).
    """

    def __init__(self, table_name: str, *, relaxed_commits: bool = False) -> None:
        self.table_name = table_name
        self.relaxed_commits = relaxed_commits
        names = object_names(table_name)
        self._composed = {
            name: sql.SQL(body).format(**names) for name, body in _read_blocks().items()
        }
        # The EXECUTE text of each statement list (one string, made once: a string built
        # per call cost more than building it) and the parameters it takes, in order.
        # Statement names and casts derive from the statements alone, so one text serves
        # every connection on which its statements are prepared.
        self._executes: dict[tuple[Statement, ...], tuple[str, list[str]]] = {}

    @property
    def quoted_table(self) -> str:
        """The table's name quoted as SQL writes it, for ``to_regclass(%(table)s)``."""
        return '"' + self.table_name.replace('"', '""') + '"'

    def composed(self, name: Statement) -> sql.Composed:
        """Statement ``name`` for this table, ready for ``cursor.execute`` with a dict."""
        return self._composed[name]

    def execute(self, cur: Any, name: Statement, params: Mapping[str, Any]) -> None:
        """Run statement ``name`` with ``params`` on ``cur``.

        On a ``PreparingConnection`` (the runner's and the client's own) the statement is
        prepared once per session and then EXECUTEd: planning these statements costs as
        much as running them. On any other connection (a caller's) it runs as plain SQL.
        """
        self.execute_together(cur, [name], params)

    def execute_together(
        self, cur: Any, names: Sequence[Statement], params: Mapping[str, Any]
    ) -> None:
        """Run statements ``names`` in one message, so in one transaction on an
        autocommit connection (its locks held to the end, behind a transaction pooler
        too); the cursor holds the last one's rows. Each sees what committed before it
        started: a lock the first waits for orders what the next one reads. Lists go as
        array literals (``db.arrays``)."""
        params = with_array_literals(params)
        prepared = getattr(cur.connection, "prepared", None)
        if prepared is None:
            parts = [self._composed[name] for name in names]
            if self._relaxed(names):
                parts.insert(0, sql.SQL(_RELAX))
            cur.execute(sql.SQL("; ").join(parts), params)
            return
        try:
            self._execute_prepared(cur, names, params, prepared)
        except psycopg2.errors.InvalidSqlStatementName:
            # The session lost them (DISCARD ALL by a pooler): prepare again, once.
            self._forget(cur, names, prepared, deallocate=False)
            self._execute_prepared(cur, names, params, prepared)
        except psycopg2.errors.FeatureNotSupported as exc:
            # "cached plan must not change result type": a migration added a column that
            # a "SELECT *" or "RETURNING *" returns. Prepare them again, once.
            if "cached plan" not in str(exc) or not cur.connection.autocommit:
                raise
            self._forget(cur, names, prepared, deallocate=True)
            self._execute_prepared(cur, names, params, prepared)

    def _relaxed(self, names: Sequence[Statement]) -> bool:
        return self.relaxed_commits and any(name in RELAXABLE for name in names)

    def _forget(
        self, cur: Any, names: Sequence[Statement],
        prepared: dict[str, tuple[str, list[str], str]], *, deallocate: bool,
    ) -> None:
        for name in names:
            entry = prepared.pop(f"{self.table_name}.{name}", None)
            if entry is not None and deallocate:
                cur.execute(f"DEALLOCATE {entry[0]}")

    def _execute_prepared(
        self, cur: Any, names: Sequence[Statement], params: Mapping[str, Any],
        prepared: dict[str, tuple[str, list[str], str]],
    ) -> None:
        together = tuple(names)
        execute = self._executes.get(together)
        for name in together:
            key = f"{self.table_name}.{name}"
            if key not in prepared:
                prepared[key] = self._prepare(cur, name, key)
                execute = None
        if execute is None:
            texts: list[str] = [_RELAX] if self._relaxed(names) else []
            arguments: list[str] = []
            for name in together:
                statement, taken, casts = prepared[f"{self.table_name}.{name}"]
                texts.append(f"EXECUTE {statement}{casts}")
                arguments.extend(taken)
            execute = self._executes[together] = ("; ".join(texts), arguments)
        text, arguments = execute
        cur.execute(text, [params[n] for n in arguments])

    def _prepare(self, cur: Any, name: str, key: str) -> tuple[str, list[str], str]:
        """PREPARE statement ``name``; return its name, its parameters' order, and the
        EXECUTE argument list (each value cast as the statement casts it)."""
        text = self._composed[name].as_string(cur.connection)
        casts: dict[str, str] = {}  # in order of first appearance
        for match in _PLACEHOLDER.finditer(text):
            if not casts.get(match[1]):
                casts[match[1]] = match[2] or ""
        names = list(casts)
        body = _PLACEHOLDER.sub(lambda m: f"${names.index(m[1]) + 1}{m[2] or ''}", text)
        statement = f"backy_{zlib.crc32(key.encode()):08x}"
        cur.execute(f"PREPARE {statement} AS {body}")
        arguments = f"({', '.join('%s' + casts[n] for n in names)})" if names else ""
        return statement, names, arguments
