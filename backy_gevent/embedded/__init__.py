"""The embedded default: a private PostgreSQL server shared by every backy-gevent process.

With no DSN configured, each command calls ``embedded_server(default_data_dir())``: it starts
the server kept in that data directory, or attaches to it if another process already did, and
yields a DSN for its database ``backy``. The last process to leave stops the server.

How processes agree, with three ``flock`` files in the data directory (the kernel drops a
process's flocks when it dies, even by kill -9, so nothing stale survives a crash):

- ``users.lock``: every process using the server holds a *shared* lock on it while it does.
  Whoever can take it *exclusively* knows nobody uses the server and may stop it.
- ``start.lock``: held exclusively while deciding whether to initdb and start, so two
  processes never start the server twice. The state check happens with the shared users lock
  already held, so the server cannot be stopped between the check and the use.
- ``watchdog.lock``: held by a small detached process (``python -m backy_gevent.embedded
  --watch DATA_DIR``) that blocks until it can take the users lock exclusively, then stops
  the server and exits: that is what stops the server after its last user was killed with -9.
  Any process that finds no watchdog running spawns one, before it starts the server, so a
  server is never left unwatched even if its starter dies at once. The watchdog is handed its
  lock already taken, and releases it before the users lock, so whoever gets in next sees
  correctly whether a watchdog is running.

A process leaving normally also tries, without waiting, to take the users lock exclusively,
and stops the server itself if it can: so the server is normally down by the time the last
command returns, and still stops if the watchdog was killed. A server left behind by kill -9
or a reboot is recognised from ``postmaster.pid`` (its pid gone, or reused by a process that
is not our postgres) and its stale files are removed before the next start.
The rooms: ``lifecycle`` starts, attaches and leaves; ``locks`` takes the flocks;
``watchdog`` is the detached process; ``server`` knows the data directory's layout and
runs PostgreSQL's programs; ``account`` chooses the account a root-run server uses, and
why the binaries may be copied.

Under gevent this blocks nothing for long (locks are polled; subprocess and psycopg2 are
patched by the console script), but a first start, with initdb, takes a second or two.
"""

from backy_gevent.embedded.lifecycle import DATABASE, default_data_dir, embedded_server
from backy_gevent.errors import EmbeddedServerError, EmbeddedUnavailable

__all__ = [
    "DATABASE",
    "EmbeddedServerError",
    "EmbeddedUnavailable",
    "default_data_dir",
    "embedded_server",
]
