"""``backy-gevent bench``: every path of the queue next to its own raw floor, in one run.

Each measurement of backy-gevent (``paths``) is taken beside a raw psycopg2 loop doing the
least the same work needs (``floors``), on the same server, in a scratch schema dropped
afterwards (``scratch``), with real ``backy-gevent run`` processes (``runners``) running the
no-op workers of ``workers``. ``report`` prints the table and the JSON, ``progress`` keeps
the terminal informed, ``command`` puts the phases in order and cleans up on ^C.

This module imports nothing: the runners import ``backy_gevent.cli.bench.workers`` alone.
"""
