"""The ``backy-gevent`` console script: parser, one module per group of commands, bench.

The commands that run on gevent's hub (``run``, ``bench``, ``web``) get gevent's monkey patch
and psycopg2's wait callback here, before anything else is imported, because modules
imported earlier would keep unpatched sockets, locks and threads. The one-shot commands
(``jobs``, ``cancel``...) need neither, and start faster without them: they import only
what they use, and wait for the database so that ^C cancels the query (``db.interrupt``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Subcommands that run on gevent's hub.
ON_GEVENT = ("run", "bench", "web")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if _command_of(arguments) in ON_GEVENT:
        from gevent import monkey

        monkey.patch_all()
        from backy_gevent.db import green

        green.install()
    else:
        from backy_gevent.db import interrupt

        interrupt.install()
    from backy_gevent.cli.main import main as run_command

    return run_command(arguments)


def _command_of(arguments: list[str]) -> str | None:
    """The subcommand: the first argument that is not a flag (options belong to the
    subcommands, so none comes before it)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


__all__ = ["main"]
