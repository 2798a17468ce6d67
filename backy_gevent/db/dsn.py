"""Which PostgreSQL server to use: the configured DSN, libpq's environment, or none.

Written once, for the client and the console script alike. "None" means nothing names a
server: the console script then starts the embedded one, and a ``Client`` says how to
configure one.
"""

from __future__ import annotations

from collections.abc import Mapping

#: libpq's own variables: if any is set, the user configured a server and we start none.
LIBPQ_VARIABLES = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

#: The DSN that leaves every choice to libpq's PG* variables and defaults.
LIBPQ_DEFAULTS = "postgresql://"


def dsn_configured(environ: Mapping[str, str]) -> bool:
    """Whether libpq's environment already names a server (then the embedded one is not used)."""
    return any(environ.get(name) for name in LIBPQ_VARIABLES)


def configured_dsn(dsn: str | None, environ: Mapping[str, str]) -> str | None:
    """The DSN to connect with: ``dsn`` itself, libpq's defaults when its PG* variables
    name a server, or None when nothing does (the embedded server's case)."""
    if dsn is not None:
        return dsn
    if dsn_configured(environ):
        return LIBPQ_DEFAULTS
    return None
