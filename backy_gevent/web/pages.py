"""The three pages' HTML, from the view models of ``web.views``: the overview (and the
fragment of it that the page refreshes), the job list, one job."""

from __future__ import annotations

import datetime
import json
from typing import Any

from backy_gevent.job import Job
from backy_gevent.web import csrf
from backy_gevent.web.markup import Markup, attributes, escape, join, render
from backy_gevent.web.templates import (
    Context,
    age,
    cells,
    hidden_fields,
    number,
    page,
    post_button,
    state_badge,
    table,
    when,
)
from backy_gevent.web.views import (
    SLOT_SECONDS,
    STATES,
    JobList,
    Overview,
    QueueRow,
)

# -- the overview ----------------------------------------------------------------------

#: Seconds of silence after which a runner is shown as silent (a live one beats every 5).
SILENT_AFTER = 15


def overview_page(ctx: Context, data: Overview) -> Markup:
    live = render(
        '<div id="live" data-refresh="$url" data-every="3000">$fragment</div>',
        url=ctx.url("/fragments/overview"), fragment=overview_fragment(ctx, data),
    )
    return page(ctx, "Overview", live, current="Overview")


def overview_fragment(ctx: Context, data: Overview) -> Markup:
    """The part of the overview that refreshes itself."""
    return join([
        _summary(ctx, data),
        Markup("<h2>Last hour</h2>"), _chart(data),
        Markup("<h2>Queues</h2>"), _queues(ctx, data),
        Markup("<h2>Runners</h2>"), _runners(data),
    ])


def _summary(ctx: Context, data: Overview) -> Markup:
    tiles = [
        ("waiting", number(sum(q.due for q in data.queues)), "available"),
        ("scheduled", number(sum(q.scheduled for q in data.queues)), "available"),
        ("running", number(data.total("running")), "running"),
        ("failed", number(data.total("failed")), "failed"),
        ("cancelled", number(data.total("cancelled")), "cancelled"),
        ("completed, last hour", number(data.last_hour("completed")), "completed"),
        ("failed, last hour", number(data.last_hour("failed")), "failed"),
        ("rows in the table", _about(data.table_rows), ""),
    ]
    return render('<section class="tiles">$tiles</section>', tiles=join(
        render('<a class="tile state-$state" href="$href"><b>$value</b><span>$label</span></a>',
               label=label, value=value, state=state, href=ctx.url("/jobs", state=state))
        for label, value, state in tiles
    ))


def _about(count: int) -> str:
    """A rough number from 10,000 on (1.2M, 35k); an exact one below."""
    if count >= 1_000_000:
        return f"~{count / 1_000_000:.1f}M"
    if count >= 10_000:
        return f"~{count // 1000}k"
    return number(count)


def _chart(data: Overview) -> Markup:
    """Completed (and failed) jobs per 5 minutes, as SVG: no script, no inline style."""
    highest = max([s["completed"] + s["failed"] for s in data.slots] + [1])
    bars = []
    for i, slot in enumerate(data.slots):
        done = 60 * slot["completed"] / highest
        failed = 60 * slot["failed"] / highest
        minutes = (len(data.slots) - i) * SLOT_SECONDS // 60
        bars.append(render(
            '<g><title>$title</title>'
            '<rect class="done" x="$x" y="$yd" width="20" height="$hd"></rect>'
            '<rect class="failed" x="$x" y="$yf" width="20" height="$hf"></rect></g>',
            title=f"{minutes - 5} to {minutes} min ago: {slot['completed']} completed,"
                  f" {slot['failed']} failed",
            x=i * 25, yd=f"{64 - done:.1f}", hd=f"{done:.1f}",
            yf=f"{64 - done - failed:.1f}", hf=f"{failed:.1f}",
        ))
    return render(
        '<figure class="chart"><svg viewBox="0 0 300 66" role="img" aria-label="$label">'
        "$bars</svg><figcaption>completed <i class=\"key done\"></i> and failed"
        ' <i class="key failed"></i> jobs per 5 minutes, oldest on the left.'
        " Completed jobs are counted while their rows are kept"
        " (<code>delete_finished_jobs = false</code>).</figcaption></figure>",
        label="jobs finished per 5 minutes over the last hour", bars=join(bars),
    )


def _queues(ctx: Context, data: Overview) -> Markup:
    return table(
        ["queue", "waiting", "scheduled", "running", "failed", "cancelled",
         "completed 1h", "failed 1h", "oldest waiting", ""],
        (_queue_row(ctx, row) for row in data.queues),
        class_="queues", empty="No jobs in any queue.",
    )


def _queue_row(ctx: Context, row: QueueRow) -> Markup:
    name = render('<a href="$href">$queue</a>', href=ctx.url("/jobs", queue=row.queue),
                  queue=row.queue)
    if row.paused_at is not None:
        name = render('$name <span class="badge paused" title="since $since">paused</span>',
                      name=name, since=row.paused_at.isoformat(timespec="seconds"))
    oldest = Markup("")
    if row.oldest:
        oldest = render('<a href="$href">$wait</a>', wait=age(row.oldest["wait"]),
                        href=ctx.url(f"/jobs/{row.oldest['id']}"))
    path = "/queues/" + _segment(row.queue)
    action = (post_button(ctx, path + "/resume", "Resume") if row.paused_at is not None
              else post_button(ctx, path + "/pause", "Pause"))
    return cells({
        "queue": name, "waiting": number(row.due), "scheduled": number(row.scheduled),
        "running": number(row.counts.get("running", 0)),
        "failed": number(row.counts.get("failed", 0)),
        "cancelled": number(row.counts.get("cancelled", 0)),
        "completed 1h": number(row.last_hour.get("completed", 0)),
        "failed 1h": number(row.last_hour.get("failed", 0)),
        "oldest waiting": oldest, "": action,
    })


def _segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _runners(data: Overview) -> Markup:
    return table(
        ["runner", "host", "pid", "workers", "queues", "started", "last beat"],
        (cells({
            "runner": Markup(f"<code>{escape(r['id'])}</code>"),
            "host": r["hostname"], "pid": r["pid"],
            "workers": ", ".join(r["workers"]) or "all",
            "queues": ", ".join(r["queues"]) or "all",
            "started": when(r["started_at"]),
            "last beat": render(
                '<span class="$cls">$ago ago$silent</span>', ago=age(r["silent_seconds"]),
                cls="silent" if r["silent_seconds"] > SILENT_AFTER else "live",
                silent=" (silent)" if r["silent_seconds"] > SILENT_AFTER else "",
            ),
        }) for r in data.runners),
        class_="runners", empty="No runner has beaten in the last hour.",
    )


# -- the job list ----------------------------------------------------------------------


def jobs_page(ctx: Context, data: JobList, workers: list[str], queues: list[str]) -> Markup:
    f = data.filters
    current = "Failed" if f.state == "failed" and not f.narrowing else "Jobs"
    content = join([
        Markup("<h1>Jobs</h1>"), _filter_form(ctx, data, workers, queues),
        _bulk_form(ctx, data), _pager(ctx, data),
    ])
    return page(ctx, "Jobs", content, current=current)


def _filter_form(ctx: Context, data: JobList, workers: list[str], queues: list[str]) -> Markup:
    f = data.filters
    options = join(
        Markup(f"<option {attributes(value=s, selected=s == f.state)}>{escape(s or 'any state')}"
               "</option>") for s in ("", *STATES)
    )
    return render(
        '<form method="get" action="$action" class="filters">'
        '<label>State <select name="state">$options</select></label>'
        '<label>Worker <input name="worker" value="$worker" list="workers"></label>'
        '<label>Queue <input name="queue" value="$queue" list="queues"></label>'
        '<label class="grow">Text in args or errors <input name="q" value="$q" type="search">'
        '</label><button type="submit">Filter</button> <a href="$action">clear</a>'
        '<datalist id="workers">$workers</datalist><datalist id="queues">$queues</datalist>'
        "</form>",
        action=ctx.url("/jobs"), options=options, worker=f.worker, queue=f.queue, q=f.q,
        workers=join(Markup(f"<option {attributes(value=w)}>") for w in workers),
        queues=join(Markup(f"<option {attributes(value=q)}>") for q in queues),
    )


def _bulk_form(ctx: Context, data: JobList) -> Markup:
    rows = table(
        ["", "id", "worker", "queue", "state", "attempt", "run at / finished", "args",
         "last error"],
        (_job_row(ctx, job) for job in data.jobs),
        class_="jobs", empty="No jobs match." if data.examined is None else
        "No matching jobs among the jobs read: search older below.",
    )
    if not ctx.allow_actions:
        return rows
    f = data.filters
    back = ctx.url("/jobs", state=f.state, worker=f.worker, queue=f.queue, q=f.q,
                   before=f.before)
    buttons = join(
        render('<button type="submit" name="action" value="$a" class="$cls">$label</button>',
               a=a, label=label, cls="danger" if a == "delete" else "")
        for a, label in (("retry", "Retry selected"), ("cancel", "Cancel selected"),
                         ("delete", "Delete selected"))
    )
    return render(
        '<form method="post" action="$action" class="bulk">$hidden'
        '<div class="bulk-actions"><label><input type="checkbox" class="select-all">'
        " all</label> $buttons</div>$rows</form>",
        action=ctx.url("/jobs/bulk"), buttons=buttons, rows=rows,
        hidden=hidden_fields({csrf.FIELD: ctx.csrf_token, "back": back}),
    )


def _job_row(ctx: Context, job: dict[str, Any]) -> Markup:
    select = Markup("")
    if ctx.allow_actions:
        select = Markup(f'<input {attributes(type="checkbox", name="id", value=job["id"])}'
                        f' aria-label="select job {job["id"]}">')
    return cells({
        "": select,
        "id": render('<a href="$href">$id</a>', href=ctx.url(f"/jobs/{job['id']}"), id=job["id"]),
        "worker": job["worker"], "queue": job["queue"], "state": state_badge(job["state"]),
        "attempt": f"{job['attempt']} of {job['max_attempts']}",
        "run at / finished": when(job["finished_at"] or job["run_at"]),
        "args": Markup(f'<code class="clip">{escape(job["args_text"])}</code>'),
        "last error": Markup(f'<span class="error clip">{escape(job["last_error"])}</span>'),
    })


def _pager(ctx: Context, data: JobList) -> Markup:
    f = data.filters
    links = []
    if f.before is not None:
        links.append(render('<a href="$href">« newest</a>',
                            href=ctx.url("/jobs", state=f.state, worker=f.worker,
                                         queue=f.queue, q=f.q)))
    if data.next_before is not None:
        href = ctx.url("/jobs", state=f.state, worker=f.worker, queue=f.queue, q=f.q,
                       before=data.next_before)
        label = "older »" if data.examined is None else "search older »"
        links.append(render('<a href="$href" rel="next">$label</a>', href=href, label=label))
    note = Markup("")
    if data.examined is not None:
        note = render(
            '<p class="muted">This page read $n jobs, down to id $id, to find these: a page'
            " reads at most that many, so that filtering stays fast on any table.</p>",
            n=number(data.examined), id=data.next_before,
        )
    return render('$note<nav class="pager">$links</nav>', note=note, links=join(links, " "))


# -- one job ---------------------------------------------------------------------------


def job_page(ctx: Context, job: Job) -> Markup:
    actions = []
    if job.state in ("failed", "cancelled"):
        actions.append(post_button(ctx, f"/jobs/{job.id}/retry", "Retry"))
    if job.state in ("available", "running"):
        actions.append(post_button(ctx, f"/jobs/{job.id}/cancel", "Cancel"))
    if job.state != "running":
        actions.append(post_button(ctx, f"/jobs/{job.id}/delete", "Delete", danger=True))
    content = render(
        '<h1>Job $id <small>$worker</small> $badge</h1><div class="actions">$actions</div>'
        '<div class="columns"><section><h2>Details</h2>$details</section>'
        "<section><h2>Timings</h2>$timings</section></div>"
        "<h2>Args</h2><pre>$args</pre>$result"
        "<h2>Errors <small>($count)</small></h2>$errors",
        id=job.id, worker=job.worker, badge=state_badge(job.state), actions=join(actions),
        details=_definitions({
            "queue": job.queue, "priority": job.priority,
            "attempt": f"{job.attempt} of {job.max_attempts}",
            "runner losses (rescues)": job.rescues,
            "quarantined": "yes" if job.quarantined else "no",
            "unique key": job.unique_key or "none", "runner": job.runner_id or "none",
        }),
        timings=_definitions(_timings(job)),
        args=json.dumps(job.args, indent=2, sort_keys=True, ensure_ascii=False),
        result=_result(job.result), count=len(job.errors), errors=_errors(job.errors),
    )
    return page(ctx, f"Job {job.id}", content)


def _timings(job: Any) -> dict[str, Any]:
    timings: dict[str, Any] = {
        "enqueued": when(job.enqueued_at), "run at": when(job.run_at),
        "last attempt started": when(job.attempted_at), "finished": when(job.finished_at),
        "lease ends": when(job.expires_at),
    }
    if job.attempted_at and job.finished_at and job.finished_at >= job.attempted_at:
        timings["last attempt took"] = age((job.finished_at - job.attempted_at).total_seconds())
    if job.attempted_at and job.attempted_at >= job.enqueued_at:
        timings["enqueued to last start"] = age(
            (job.attempted_at - job.enqueued_at).total_seconds())
    return timings


def _definitions(values: dict[str, Any]) -> Markup:
    return render("<dl>$items</dl>", items=join(
        render("<dt>$k</dt><dd>$v</dd>", k=k, v=v) for k, v in values.items()
    ))


def _result(result: Any) -> Markup:
    shown = "none" if result is None else json.dumps(
        result, indent=2, sort_keys=True, ensure_ascii=False)
    return render("<h2>Result</h2><pre>$result</pre>", result=shown)


def _moment(text: Any) -> Any:
    """An error's time as the other timestamps show, or as it was written."""
    try:
        return when(datetime.datetime.fromisoformat(str(text)))
    except ValueError:
        return text


def _errors(errors: list[dict[str, Any]]) -> Markup:
    if not errors:
        return Markup('<p class="empty">No failed attempts.</p>')
    return join(
        render(
            '<details class="error-entry" $open><summary>attempt $attempt · $at · '
            "<b>$error</b>: $message</summary><pre>$traceback</pre></details>",
            open=Markup("open") if i == len(errors) - 1 else Markup(""),
            attempt=e.get("attempt", "?"), at=_moment(e.get("at")), error=e.get("error", ""),
            message=e.get("message", ""), traceback=e.get("traceback") or "(no traceback)",
        )
        for i, e in enumerate(errors)
    )
