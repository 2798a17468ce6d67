"""The Grafana dashboard: its shape, every expression through promtool, and every panel
answered by a real Prometheus that scraped a real runner."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backy_gevent.client import Client
from tests.acceptance.scraping import SKIP_VARIABLE, Prometheus, free_port, require_tool
from tests.conftest import ROOT, RunnerProcess, query, wait_until

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "backy-gevent.json"

#: What Grafana puts in for the template variables when every value is chosen.
SUBSTITUTIONS = {"$__rate_interval": "15s", "$worker": ".*", "$queue": ".*"}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, raw expression) of every query in the dashboard."""
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    """The expression as Grafana sends it with All selected."""
    for variable, replacement in SUBSTITUTIONS.items():
        expr = expr.replace("${" + variable[1:] + "}", replacement).replace(variable, replacement)
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


def test_the_dashboard_picks_its_datasource_through_a_variable() -> None:
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert "__inputs" not in dashboard and "${DS_" not in text
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("worker", "queue"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_rate_uses_the_rate_interval() -> None:
    exprs = [expr for _, expr in targets(load_dashboard())]
    ranges = {r for expr in exprs for r in re.findall(r"\[([^\]]*)\]", expr)}
    assert ranges == {"$__rate_interval"}


def test_the_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(expr for _, expr in targets(load_dashboard()))
    for metric in (
        "backy_jobs_completed_total", "backy_job_retries_total", "backy_job_timeouts_total",
        "backy_jobs_failed_total", "backy_jobs_enqueued_total",
        "backy_job_duration_seconds_bucket", "backy_job_wait_seconds_bucket",
        "backy_jobs_running", "backy_queue_jobs", "backy_queue_oldest_wait_seconds",
    ):
        assert metric in exprs, metric


def test_every_dashboard_expression_passes_promtool_check_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = [
        {"record": f"backy_dashboard:query_{n}", "expr": substitute(expr)}
        for n, (_, expr) in enumerate(targets(load_dashboard()))
    ]
    rules_file = tmp_path / "dashboard-rules.yml"
    # JSON is YAML: no YAML library needed.
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_the_prometheus_example_config_is_valid() -> None:
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(GRAFANA / "prometheus.yml")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_provisioning_examples_point_at_the_dashboard() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource and "apiVersion: 1" in datasource
    provider = (GRAFANA / "provisioning" / "dashboards" / "backy-gevent.yml").read_text()
    assert "type: file" in provider and "path: " in provider


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        server = Prometheus(tmp_path / "prometheus", targets)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def test_a_real_prometheus_returns_data_for_every_panel(
    client: Client,
    db: Any,
    runner: Callable[..., RunnerProcess],
    prometheus: Callable[[list[str]], Prometheus],
) -> None:
    require_tool("prometheus")
    port = free_port()
    runner("--metrics-port", str(port))
    server = prometheus([f"127.0.0.1:{port}"])
    # A workload that makes every series exist: completions, retries, failures, a
    # timeout, enqueues from inside the runner, durations and waits.
    client.enqueue_many("record", [{}] * 3)
    client.enqueue("fail")
    client.enqueue("sleep", seconds=3)
    client.enqueue("fan_out", count=2)
    wait_until(
        lambda: query(db, "SELECT count(*) FROM jobs WHERE state IN ('available', 'running')")
        == [(0,)],
        20, what="the workload to finish",
    )
    dashboard = load_dashboard()
    pending = dict(targets(dashboard))

    def all_answered() -> bool:
        for name, expr in list(pending.items()):
            if server.query(substitute(expr)):
                del pending[name]
        return not pending

    try:
        wait_until(all_answered, 30, 0.5, what="data for every panel")
    except AssertionError:
        raise AssertionError(f"no data from Prometheus for: {pending}") from None
    # Prometheus saw the runner's real counts.
    [completed] = server.query('sum(backy_jobs_completed_total{worker="record"})')
    assert float(completed["value"][1]) == 5
    # The worker and queue variables find their values.
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
        if match:
            series = server.api("series", **{"match[]": substitute(match[1])})
            assert {s.get(match[2]) for s in series} >= {"default" if match[2] == "queue"
                                                         else "record"}


def test_a_missing_prometheus_fails_loudly_unless_skipped_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SKIP_VARIABLE, raising=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y prometheus"):
        require_tool("backy-no-such-tool")
    monkeypatch.setenv(SKIP_VARIABLE, "1")
    with pytest.raises(pytest.skip.Exception):
        require_tool("backy-no-such-tool")
