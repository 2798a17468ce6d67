"""Scraping a runner's metrics endpoint, checking it with promtool, and a real Prometheus.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package. When they are
missing the tests that need them fail, loudly, saying what to install; only an explicit
``BACKY_SKIP_PROMETHEUS=1`` turns that into a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until

SKIP_VARIABLE = "BACKY_SKIP_PROMETHEUS"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def require_tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; fail the test when it is missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path:
        return path
    message = (
        f"{name} is not installed: the metrics and dashboard tests need Debian's prometheus"
        " package (apt-get update && apt-get install -y prometheus), which provides"
        f" /usr/bin/prometheus and /usr/bin/promtool. Set {SKIP_VARIABLE}=1 to skip them"
        " on purpose."
    )
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(message)
    pytest.fail(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET, also for error statuses; (0, reason) when refused."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError) as exc:
        return 0, str(exc)


def scrape_text(port: int) -> str:
    """The runner's /metrics text; fails the test on any other status."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return body


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(port: int) -> Samples:
    """The runner's samples, parsed."""
    return parse(scrape_text(port))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the runner did not expose it."""
    return samples.get((name, frozenset(labels.items())))


def promtool_check_metrics(text: str) -> None:
    """``promtool check metrics`` must accept the scrape without a complaint."""
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=text, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


class Prometheus:
    """A real Prometheus on 127.0.0.1 with a data directory of its own, scraping targets."""

    def __init__(self, directory: Path, targets: list[str], scrape_interval: str = "1s"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "prometheus.yml"
        # JSON is YAML: no YAML library needed.
        config.write_text(json.dumps({
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
            "scrape_configs": [
                {"job_name": "backy-gevent", "static_configs": [{"targets": targets}]}
            ],
        }))
        self.log_path = directory / "prometheus.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                require_tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until Prometheus answers /-/ready and has scraped every target once, up."""
        def ready() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()
            return get(f"{self.url}/-/ready")[0] == 200
        wait_until(ready, timeout, 0.1, "Prometheus to be ready")

        def targets_up() -> bool:
            data = self.api("targets")
            active = data["activeTargets"]
            return bool(active) and all(t["health"] == "up" for t in active)
        wait_until(targets_up, timeout, 0.2, "Prometheus to scrape the runner")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of one HTTP API call (``/api/v1/<path>``)."""
        query = urllib.parse.urlencode(params)
        status, body = get(f"{self.url}/api/v1/{path}?{query}")
        reply = json.loads(body) if body.startswith("{") else {"status": body}
        assert status == 200 and reply["status"] == "success", (path, params, body)
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector an expression returns now."""
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
