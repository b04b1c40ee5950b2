"""Prometheus metrics of one node: ``--metrics-listen HOST:PORT`` (TOML
``metrics_listen``) serves them at ``GET /metrics``.

The endpoint is a small asyncio handler on the node's own event loop, not
prometheus_client's threaded server: the gauges are read from the node's
tables (connections, sessions, opens) while a scrape runs, and the loop is the
only place they can be read without racing the requests that change them.

What is counted comes from plain objects below: the node's tables, the SMB
layer's ``BreakClock`` (breaks sent, acknowledgement latency), the bus pipe's
round-trip callback (``oplock_bus.redis_pipe.observe_round_trips``) and the
Redis bus's liveness (recoveries, fencing), read with ``getattr`` at scrape
time so that a bus without them simply reports zeros. Neither the bus nor the
SMB layer imports prometheus_client. Each node keeps its own registry, not the
library's global one, so that nothing of one node shows on another's page.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from oplock_bus.redis_pipe import observe_round_trips

from .config import ConfigError
from .smb.breakclock import KINDS, BreakClock
from .smb.state import Open

log = logging.getLogger("smbgw.metrics")

# Seconds. A client on a LAN acknowledges a break in milliseconds; the break
# timeout (35 s by default) is the longest an acknowledgement can take.
BREAK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 35)
# A Redis command answers in well under a millisecond on a quiet LAN; the
# bus's command timeout (2 s by default) bounds it.
BUS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2,
)  # fmt: skip
# A recovery is a pause the clients see: a Redis restart takes well under a
# second, a Sentinel switch a few.
RECOVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

OPEN_KINDS = ("plain", "durable", "persistent", "disconnected")

_MAX_REQUEST_HEAD = 8192  # a scrape's request line and headers
_REQUEST_TIMEOUT = 10.0  # seconds a scraper may take to send them


class MeteredNode(Protocol):
    """What the metrics read of a node (``gateway.node.Node``)."""

    # Read-only here (properties), so that the node's own, narrower types fit.
    @property
    def connections(self) -> Sized: ...
    @property
    def sessions(self) -> Mapping[int, Any]: ...
    @property
    def opens(self) -> Mapping[str, Open]: ...
    @property
    def break_clock(self) -> BreakClock: ...
    @property
    def fencings(self) -> int:
        """Times the node dropped every client because the bus could not vouch for it."""
        ...


def open_kind(op: Open) -> str:
    """One kind per open, the first that applies: waiting for its client to
    come back, persistent (CA), durable (or resilient), else plain."""
    if op.connection is None:
        return "disconnected"
    if op.persistent:
        return "persistent"
    if op.durable or op.resilient:
        return "durable"
    return "plain"


class _NodeCollector(Collector):
    """The figures read at scrape time: tables, counters, the bus's liveness."""

    def __init__(self, node: MeteredNode, liveness: object | None) -> None:
        self.node = node
        self.liveness = liveness

    def collect(self) -> Iterable[Metric]:
        node = self.node
        yield GaugeMetricFamily(
            "smbgw_connections", "Client TCP connections open on this node",
            value=len(node.connections),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "smbgw_sessions", "SMB sessions on this node, whatever their channels",
            value=len(node.sessions),
        )  # fmt: skip
        counts = dict.fromkeys(OPEN_KINDS, 0)
        for op in node.opens.values():
            counts[open_kind(op)] += 1
        opens = GaugeMetricFamily(
            "smbgw_opens",
            "Opens this node holds on the bus, by kind (disconnected: a durable or "
            "persistent handle waiting for its client)",
            labels=["kind"],
        )
        for kind, n in counts.items():
            opens.add_metric([kind], n)
        yield opens
        clock = node.break_clock
        sent = CounterMetricFamily(
            "smbgw_breaks_sent", "Oplock and lease break notifications sent to clients",
            labels=["kind"],
        )  # fmt: skip
        for kind in KINDS:
            sent.add_metric([kind], clock.sent[kind])
        yield sent
        yield GaugeMetricFamily(
            "smbgw_breaks_awaiting_ack", "Breaks sent whose acknowledgement has not come yet",
            value=clock.awaiting_ack,
        )  # fmt: skip
        yield from self._liveness()

    def _liveness(self) -> Iterable[Metric]:
        live = self.liveness
        recoveries = _number(getattr(live, "recoveries", 0))
        durations = [_number(s) for s in getattr(live, "recovery_seconds", None) or ()]
        yield CounterMetricFamily(
            "smbgw_bus_recoveries", "Recoveries of the lock space after the bus lost its state",
            value=recoveries,
        )  # fmt: skip
        yield _histogram(
            "smbgw_bus_recovery_duration_seconds",
            "How long each recovery took, from the loss seen to grants resuming",
            durations, RECOVERY_BUCKETS,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "smbgw_bus_recovering", "1 while a recovery runs (no grants anywhere)",
            value=1 if getattr(live, "recovering", False) else 0,
        )  # fmt: skip
        generation = getattr(live, "generation", None)
        if generation:
            yield InfoMetricFamily(
                "smbgw_bus_generation", "The bus generation this node serves under",
                value={"generation": str(generation)},
            )  # fmt: skip
        # The liveness counts fencing where it has learnt to; until then (and
        # on the in-process bus) the node's own count of the times it dropped
        # its clients says the same.
        fenced = getattr(live, "fenced_events", None)
        yield CounterMetricFamily(
            "smbgw_fenced_events",
            "Times this node fenced itself (the bus could not vouch for it) and dropped "
            "its clients",
            value=_number(fenced) if fenced is not None else self.node.fencings,
        )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _histogram(
    name: str, doc: str, samples: list[float], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    """A histogram built from every sample at once (the list is short: one per recovery)."""
    buckets: list[tuple[str, float]] = [
        (repr(float(le)), float(sum(1 for s in samples if s <= le))) for le in bounds
    ]
    buckets.append(("+Inf", float(len(samples))))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum(samples))


class NodeMetrics:
    """One node's registry and its HTTP endpoint."""

    def __init__(self, node: MeteredNode, liveness: object | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node, liveness))
        self.break_latency = Histogram(
            "smbgw_break_latency_seconds",
            "Seconds from a break notification sent to its acknowledgement received",
            ["kind"], buckets=BREAK_BUCKETS, registry=self.registry,
        )  # fmt: skip
        for kind in KINDS:  # shown (at zero) before the first break, as the counters are
            self.break_latency.labels(kind)
        self.bus_round_trip = Histogram(
            "smbgw_bus_round_trip_seconds",
            "Seconds from a bus command sent to Redis to its reply (the pipelined "
            "connection's commands: document reads, compare-and-set, publish)",
            buckets=BUS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._node = node
        self._server: asyncio.base_events.Server | None = None
        self._unobserve: Callable[[], None] | None = None

    def _break_acked(self, kind: str, seconds: float) -> None:
        self.break_latency.labels(kind).observe(seconds)

    async def start(self, host: str, port: int) -> None:
        """Listen on (host, port); a port in use is a ConfigError (one line, exit 2)."""
        where = f"{host}:{port}"
        try:
            self._server = await asyncio.start_server(
                self._serve, host, port, reuse_address=True, limit=_MAX_REQUEST_HEAD
            )
        except OSError as e:
            reason = {
                errno.EADDRINUSE: "port in use", errno.EACCES: "permission denied",
            }.get(e.errno or 0, e.strerror or str(e))  # fmt: skip
            raise ConfigError(f"--metrics-listen {where}: cannot listen: {reason}") from None
        self._node.break_clock.on_ack = self._break_acked
        self._unobserve = observe_round_trips(self.bus_round_trip.observe)
        log.info("metrics on http://%s/metrics", where)

    async def stop(self) -> None:
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        if self._node.break_clock.on_ack == self._break_acked:
            self._node.break_clock.on_ack = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    def page(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, HTTP/1.0 style: answered, then the connection closes."""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            status, body = self._answer(head.split(b"\r\n", 1)[0])
            method = head.split(b" ", 1)[0]
            content_type = CONTENT_TYPE_LATEST if status == "200 OK" else "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass  # the scraper went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, request_line: bytes) -> tuple[str, bytes]:
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", b"bad request\n"
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"only GET\n"
        if target.split(b"?", 1)[0] not in (b"/metrics", b"/"):
            return "404 Not Found", b"metrics are at /metrics\n"
        try:
            return "200 OK", self.page()
        except Exception as e:  # noqa: BLE001 - a broken figure must not take the node's log
            log.warning("metrics page failed: %s: %s", type(e).__name__, e)
            return "500 Internal Server Error", b"metrics unavailable, see the node's log\n"
