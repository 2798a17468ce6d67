"""The database room: connections, which server to use, named statements, migrations.

Nothing here knows about runners or jobs' lives; the engine (``backy_gevent.runner``),
the client and the command line all reach PostgreSQL through these modules.
"""
