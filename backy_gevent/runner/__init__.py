"""The engine: the runner and the parts it is made of.

``runner`` starts the loops and shuts them down; ``fetcher`` claims jobs, ``listener``
hears notifications, ``maintenance`` beats and rescues, ``periodic`` enqueues the ticks
of cron schedules, ``pools`` run each worker's jobs in greenlets, ``executor`` runs one
attempt, ``completer`` writes outcomes, and ``supervision`` keeps every loop going.
"""

from backy_gevent.runner.runner import Runner

__all__ = ["Runner"]
