"""The ``backy-gevent`` console script: parser, one module per group of commands, bench.

gevent and psycopg2 are patched here, before anything else is imported, because
modules imported earlier would keep unpatched sockets, locks and threads. Every other
module of this package is imported after the patch.
"""

from gevent import monkey

monkey.patch_all()

from backy_gevent.db import green  # noqa: E402 - must follow the patch

green.install()

from backy_gevent.cli.main import main  # noqa: E402

__all__ = ["main"]
