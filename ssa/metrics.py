"""
The daemon's counters (L{IMetrics}) and their Prometheus form.

Each process counts into its own L{PrometheusMetrics}; the main process
serves C{/metrics} (L{ssa.metricsweb}) with the sum over every worker:
each worker gives its L{families} (plain data, so they travel over the
links between processes), L{merge} adds them up and L{render} writes the
Prometheus text format.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from zope.interface import implementer

from .interfaces import IMetrics

#: The classes of failure reasons that C{ssa_failures_total} counts.
REASONS = ("certificate", "hostname", "revocation", "timeout", "refused", "other")
#: The handshake time histogram's buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_REFUSED = {errno.ECONNREFUSED, errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET}


def reason_class(err: int, reason: str) -> str:
    """
    The class (one of L{REASONS}) of a failure with C{err} and C{reason}.
    """
    text = reason.lower()
    if err == errno.ETIMEDOUT or "timed out" in text or "did not finish" in text:
        return "timeout"
    if "revoked" in text or "revocation" in text or "ocsp" in text or "crl" in text:
        return "revocation"
    if "hostname mismatch" in text or "no hostname" in text:
        return "hostname"
    if "certificate" in text or "verify" in text:
        return "certificate"
    if err in _REFUSED:
        return "refused"
    return "other"


@implementer(IMetrics)
class PrometheusMetrics:
    """
    Counters held by C{prometheus_client}, in a registry of their own.

    @ivar registry: the L{CollectorRegistry} holding them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._connections = Counter(
            "ssa_connections", "Connections by role (client, server) and outcome (ok, failed).",
            ["role", "outcome"], registry=self.registry,
        )
        self._failures = Counter(
            "ssa_failures", "Failed connections by reason class.", ["reason"], registry=self.registry
        )
        self._resumptions = Counter(
            "ssa_resumptions", "Successful handshakes that resumed a session.", registry=self.registry
        )
        self._active = Gauge("ssa_active_connections", "Connections carrying data now.", registry=self.registry)
        self._handshake = Histogram(
            "ssa_handshake_seconds", "Seconds from connect() to a finished handshake (client sockets).",
            buckets=BUCKETS, registry=self.registry,
        )
        self._bytes = Counter(
            "ssa_bytes", "Plaintext bytes moved: in from peers, out to peers.", ["direction"],
            registry=self.registry,
        )
        for role in ("client", "server"):
            for outcome in ("ok", "failed"):
                self._connections.labels(role, outcome)
        for reason in REASONS:
            self._failures.labels(reason)
        for direction in ("in", "out"):
            self._bytes.labels(direction)

    def connection(
        self, role: str, outcome: str, reason: str | None, handshake_seconds: float | None, resumed: bool
    ) -> None:
        """
        See L{IMetrics.connection}.
        """
        self._connections.labels(role, outcome).inc()
        if reason is not None:
            self._failures.labels(reason).inc()
        if handshake_seconds is not None:
            self._handshake.observe(handshake_seconds)
        if resumed:
            self._resumptions.inc()

    def active(self, delta: int) -> None:
        """
        See L{IMetrics.active}.
        """
        self._active.inc(delta)

    def transferred(self, direction: str, count: int) -> None:
        """
        See L{IMetrics.transferred}.
        """
        if count:
            self._bytes.labels(direction).inc(count)

    def families(self) -> list[dict]:
        """
        The current values as plain data (JSON-able), for L{merge}.
        """
        return [
            {
                "name": metric.name, "type": metric.type, "help": metric.documentation,
                "samples": [
                    [sample.name, sample.labels, sample.value]
                    for sample in metric.samples
                    if not sample.name.endswith("_created")
                ],
            }
            for metric in self.registry.collect()
        ]


@implementer(IMetrics)
class MemoryMetrics:
    """
    Counters in plain attributes, for tests.

    @ivar connections: every L{connection} call's arguments, in order.
    @ivar active_now: the sum of L{active} deltas.
    @ivar bytes: plaintext bytes by direction.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[str, str, str | None, float | None, bool]] = []
        self.active_now = 0
        self.bytes: dict[str, int] = {"in": 0, "out": 0}

    def connection(
        self, role: str, outcome: str, reason: str | None, handshake_seconds: float | None, resumed: bool
    ) -> None:
        """
        See L{IMetrics.connection}.
        """
        self.connections.append((role, outcome, reason, handshake_seconds, resumed))

    def active(self, delta: int) -> None:
        """
        See L{IMetrics.active}.
        """
        self.active_now += delta

    def transferred(self, direction: str, count: int) -> None:
        """
        See L{IMetrics.transferred}.
        """
        self.bytes[direction] += count


def merge(reports: Iterable[list[dict]]) -> list[dict]:
    """
    Add up the L{PrometheusMetrics.families} of several processes: samples
    with the same name and labels are summed.
    """
    merged: dict[str, dict] = {}
    values: dict[str, dict[tuple, float]] = {}
    for families in reports:
        for family in families:
            name = family["name"]
            if name not in merged:
                merged[name] = {"name": name, "type": family["type"], "help": family["help"]}
                values[name] = {}
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                values[name][key] = values[name].get(key, 0.0) + value
    for name, family in merged.items():
        family["samples"] = [[sample, dict(labels), value] for (sample, labels), value in values[name].items()]
    return list(merged.values())


class _Families:
    """
    A C{prometheus_client} collector of fixed families.
    """

    def __init__(self, families: list[dict]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        for family in self._families:
            metric = Metric(family["name"], family["help"], family["type"])
            for sample, labels, value in family["samples"]:
                metric.add_sample(sample, labels, value)
            yield metric


def render(families: list[dict]) -> bytes:
    """
    The Prometheus text format of C{families}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def summary(families: list[dict]) -> dict[str, float]:
    """
    The counters people read in C{ssa status}, by short name:
    C{connections_client_ok}, C{failures_certificate}, C{handshakes}
    (successful ones, both roles), C{resumptions}, C{active}, C{bytes_in},
    C{bytes_out}.
    """
    out: dict[str, float] = {}
    for family in families:
        for sample, labels, value in family["samples"]:
            if sample == "ssa_connections_total":
                out[f"connections_{labels['role']}_{labels['outcome']}"] = value
            elif sample == "ssa_failures_total":
                out[f"failures_{labels['reason']}"] = value
            elif sample == "ssa_bytes_total":
                out[f"bytes_{labels['direction']}"] = value
            elif sample == "ssa_resumptions_total":
                out["resumptions"] = value
            elif sample == "ssa_active_connections":
                out["active"] = value
    out["handshakes"] = sum(
        value for name, value in out.items() if name.startswith("connections_") and name.endswith("_ok")
    )
    return out
