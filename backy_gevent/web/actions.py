"""What the dashboard's buttons do: retry, cancel or delete jobs, pause or resume a
queue. Each returns the notice code its redirect carries (see ``templates.NOTICES``).

The app calls these only for a POST with a valid CSRF token from a dashboard started
with actions allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from backy_gevent.client import Client

JOB_ACTIONS = ("retry", "cancel", "delete")
QUEUE_ACTIONS = ("pause", "resume")


def on_job(client: Client, action: str, job_id: int) -> str:
    """Retry, cancel or delete one job; the notice code."""
    changed = on_jobs(client, action, [job_id])
    if changed < 0:
        return "held"
    return _DONE[action] if changed else "unchanged"


def on_jobs(client: Client, action: str, job_ids: Sequence[int]) -> int:
    """Retry, cancel or delete jobs (those whose state allows it); how many changed, or
    -1 when a single retry was refused because another job holds its unique_key."""
    if action == "delete":
        return len(client.delete(job_ids))
    changed = 0
    for job_id in job_ids:
        try:
            job = client.retry(job_id) if action == "retry" else client.cancel(job_id)
        except ValueError:  # its unique_key is held by a waiting or running job
            if len(job_ids) == 1:
                return -1
            continue
        changed += job is not None
    return changed


def on_queue(client: Client, action: str, queue: str) -> str:
    """Pause or resume a queue; the notice code."""
    if action == "pause":
        client.pause(queue)
        return "paused"
    client.resume(queue)
    return "resumed"


_DONE = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}


def done(action: str) -> str:
    """The notice code of a bulk action that changed some jobs."""
    return _DONE[action]
