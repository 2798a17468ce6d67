"""The dashboard's HTML: the layout and the pieces every page uses.

Every value goes through ``markup.render``, which escapes it: job args, errors and
tracebacks are user data. Pages (``web.pages``) are built from these pieces.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

from backy_gevent.web import csrf
from backy_gevent.web.http import Request
from backy_gevent.web.markup import Markup, attributes, escape, join, render


@dataclasses.dataclass(frozen=True)
class Context:
    """What every page needs besides its data: the request, the CSRF token to put in
    forms, whether actions are allowed, and the jobs table's name."""

    request: Request
    csrf_token: str
    allow_actions: bool
    table_name: str

    def url(self, path: str, **query: Any) -> str:
        return self.request.url(path, **query)


LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · backy-gevent</title>
<link rel="stylesheet" href="$css">
<script src="$js" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="$home">backy-gevent</a>
<nav>$nav</nav>
<span class="mode $mode_class">$mode</span>
</header>
<main>
$notice
$content
</main>
<footer>jobs table <code>$table</code> · rendered $now</footer>
</body>
</html>
"""

NAV_ITEMS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("Overview", "/", {}), ("Jobs", "/jobs", {}), ("Failed", "/jobs", {"state": "failed"}),
)

#: What an action left to say, by the code it redirects with (never text from the URL).
NOTICES = {
    "retried": "Retried: waiting to run again.",
    "cancelled": "Cancelled.",
    "deleted": "Deleted.",
    "paused": "Queue paused: runners claim none of its jobs until it is resumed.",
    "resumed": "Queue resumed.",
    "unchanged": "Nothing changed: the job is not in a state that allows it.",
    "held": "Not retried: another waiting or running job holds its unique_key.",
    "none": "No jobs were selected.",
}


def page(ctx: Context, title: str, content: Markup, current: str = "") -> Markup:
    """A whole page around ``content``."""
    nav = join(
        render("<a $attrs>$label</a>", label=label, attrs=attributes(
            href=ctx.url(path, **query), aria_current="page" if label == current else None))
        for label, path, query in NAV_ITEMS
    )
    return render(
        LAYOUT, title=title, content=content, nav=nav, table=ctx.table_name,
        css=ctx.url("/static/dashboard.css"), js=ctx.url("/static/dashboard.js"),
        home=ctx.url("/"), notice=notice(ctx.request),
        mode="actions on" if ctx.allow_actions else "read-only",
        mode_class="on" if ctx.allow_actions else "off",
        now=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
    )


def notice(request: Request) -> Markup:
    message = NOTICES.get(request.arg("notice"))
    if not message:
        return Markup("")
    count = request.arg("n")
    if count.isdigit():
        message = f"{message} ({int(count)} jobs)"
    return render('<p class="notice" role="status">$message</p>', message=message)


def post_button(ctx: Context, path: str, label: str, *, danger: bool = False,
                hidden: dict[str, str] | None = None) -> Markup:
    """A one-button form that POSTs to ``path`` with the CSRF token; nothing when
    actions are off."""
    if not ctx.allow_actions:
        return Markup("")
    fields = {csrf.FIELD: ctx.csrf_token, **(hidden or {})}
    return render(
        '<form method="post" action="$action" class="inline">$fields'
        '<button type="submit" class="$kind">$label</button></form>',
        action=ctx.url(path), label=label, kind="danger" if danger else "",
        fields=hidden_fields(fields),
    )


def hidden_fields(fields: dict[str, str]) -> Markup:
    return join(
        Markup(f'<input {attributes(type="hidden", name=name, value=value)}>')
        for name, value in fields.items()
    )


def when(moment: datetime.datetime | None) -> Markup:
    """A timestamp in UTC, to the second; an empty cell for None."""
    if moment is None:
        return Markup('<span class="muted">none</span>')
    utc = moment.astimezone(datetime.timezone.utc)
    return render('<time datetime="$iso" title="$iso">$shown</time>',
                  iso=utc.isoformat(), shown=utc.strftime("%Y-%m-%d %H:%M:%S"))


def age(seconds: float | None) -> str:
    """A duration the way people read one: 4s, 3m 12s, 2h 5m, 6d 1h."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                            ("m", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size}{unit} {rest}{smaller}" if rest else f"{whole // size}{unit}"
    return f"{whole}s"


def state_badge(state: str) -> Markup:
    return render('<span class="badge state-$state">$state</span>', state=state)


def number(value: int) -> str:
    return f"{value:,}"


def table(columns: Iterable[str], body: Iterable[Markup], *, class_: str = "",
          empty: str = "nothing here") -> Markup:
    """A table whose cells are labelled for phones (``data-label``: see the CSS)."""
    rows = list(body)
    if not rows:
        return render('<p class="empty">$empty</p>', empty=empty)
    head = join(Markup(f"<th>{escape(c)}</th>") for c in columns)
    return render(
        '<div class="scroll"><table class="$cls"><thead><tr>$head</tr></thead>'
        "<tbody>$rows</tbody></table></div>",
        cls=class_, head=head, rows=join(rows),
    )


def cells(values: dict[str, Any]) -> Markup:
    """A table row: ``{column label: cell content}``."""
    return Markup("<tr>" + "".join(
        f"<td {attributes(data_label=label)}>{escape(value)}</td>"
        for label, value in values.items()
    ) + "</tr>")
