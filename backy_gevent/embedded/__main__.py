"""``python -m backy_gevent.embedded --watch DATA_DIR --lock-fd FD``: the watchdog."""

import sys

from backy_gevent.embedded.watchdog import main

sys.exit(main())
