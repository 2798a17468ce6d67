"""The per-job metrics as plain numbers, made into Prometheus families at scrape time.

The hooks of every attempt count it: prometheus_client's Counter and Histogram take a
lock per update (a gevent lock once the process is monkey-patched) and walk a
histogram's buckets in Python, which came to a fifth of a runner's CPU per job in a
backlog drain. Here an update is a dict lookup, a bisect and an addition or two; the
counts are read when the registry is collected. A runner's hub is one thread, so
nothing here needs a lock: a scrape reads a copy of the items.

The text they make is prometheus_client's (same names, ``_total``, ``_bucket`` with
``le`` labels, ``_count``, ``_sum``), without the ``_created`` samples.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class _Child:
    """``counter.labels(...)``: what prometheus_client's labelled children offer."""

    __slots__ = ("counter", "labels")

    def __init__(self, counter: TallyCounter, labels: Labels) -> None:
        self.counter = counter
        self.labels = labels

    def inc(self, amount: float = 1.0) -> None:
        self.counter.inc(self.labels, amount)


class TallyCounter(Collector):
    """A counter by label values (``name`` without ``_total``, as prometheus_client's)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        """Add ``amount`` to the count of ``labels`` (label values, in order)."""
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def labels(self, *values: str) -> _Child:
        """The count of these label values, as ``Counter.labels`` gives it."""
        return _Child(self, tuple(values))

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self._values.items()):
            family.add_metric(list(labels), value)
        yield family


class TallyHistogram(Collector):
    """A histogram by label values, with fixed ``buckets`` (upper bounds, ascending)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = list(buckets)
        #: Per label values: the count of each bucket (not cumulative; the last one is
        #: past every bound), and the sum of the values.
        self._tallies: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        """Count ``value`` for ``labels``: in the first bucket whose bound is at least it."""
        tally = self._tallies.get(labels)
        if tally is None:
            tally = self._tallies[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        tally[0][bisect.bisect_left(self.bounds, value)] += 1
        tally[1][0] += value

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        for labels, (counts, total) in list(self._tallies.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, list(counts), strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(list(labels), buckets, total[0])
        yield family
