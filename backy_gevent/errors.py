"""The errors backy-gevent reports to its callers, in one place.

Each is one line of text meant for a person. The console script turns them into exit
statuses: 2 for what the user must change (``ConfigError``, ``UsageError``,
``WorkerError``, ``PluginError``, ``BadJobArgs``, ``BadOption``, ``EmbeddedUnavailable``),
1 for a database that is missing, behind or won't start (``SchemaMissing``,
``DatabaseUnavailable``, ``EmbeddedServerError``).

The exceptions a job sees or raises (``JobTimeout``) live with the Job in
``backy_gevent.job``: their module is recorded in the rows' error history.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the option and the value."""


class UsageError(Exception):
    """Bad input on the command line: printed as one line, exit status 2."""


class WorkerError(LookupError):
    """A worker can't be found, is registered twice, or is not a Worker."""


class PluginError(RuntimeError):
    """A plugin can't be loaded or implements a hook that does not exist."""


class BadJobArgs(TypeError):
    """Job args that the jobs table can't hold; the message names the key. Nothing is
    written."""


class BadOption(ValueError):
    """An option of a ``Client`` call that is of the wrong type or out of range (a delay,
    a priority, a queue...); the message names it. Nothing is written."""


class SchemaMissing(RuntimeError):
    """The jobs table is missing or behind: ``backy-gevent setup`` must run first."""


class DatabaseUnavailable(Exception):
    """The database can't be used (the embedded server failed to start): exit status 1."""


class EmbeddedUnavailable(RuntimeError):
    """The embedded server cannot be used here; a DSN (``--dsn`` or ``BACKY_DSN``) is needed."""


class EmbeddedServerError(RuntimeError):
    """The embedded server should work here but failed; the message says why and where to look."""
