"""``python -m backy_gevent``: the same as the ``backy-gevent`` console script."""

from backy_gevent.cli import main

raise SystemExit(main())
