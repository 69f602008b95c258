"""The monitor's counters and their Prometheus text exposition at ``GET /metrics``.

The route is mounted on the REST API's app by ``serve`` (not by ``api/app.py``) and, like every
API route, needs a bearer token: the API's middleware refuses requests without one and the
route declares :func:`~iotsentry.api.auth.require_read` as its dependency.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from iotsentry.api.auth import require_read

__all__ = ["CONTENT_TYPE", "Metrics", "metrics_router"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and gauges of one monitor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.packets: Counter[str] = Counter()
        self.flows: Counter[str] = Counter()
        self.batches: Counter[str] = Counter()
        self.alerts_stored: Counter[int] = Counter()
        self.sink_errors = 0
        self.queue_depth = 0
        self.queue_capacity = 0
        self.learning = True
        self.canary_runs = 0
        self.canary_detected = 0
        self.canary_classes = 0
        self.last_batch_latency_s = 0.0

    def batch(self, source: str, packets: int, flows: int, latency_s: float) -> None:
        """Count one processed batch of ``source``."""
        with self._lock:
            self.packets[source] += packets
            self.flows[source] += flows
            self.batches[source] += 1
            self.last_batch_latency_s = latency_s

    def stored(self, severities: list[int]) -> None:
        """Count alerts committed to the store."""
        with self._lock:
            self.alerts_stored.update(severities)

    def canary(self, detected: int, classes: int) -> None:
        """Record the coverage of one canary run."""
        with self._lock:
            self.canary_runs += 1
            self.canary_detected = detected
            self.canary_classes = classes

    def set(self, **gauges: Any) -> None:
        """Set gauges (``queue_depth``, ``queue_capacity``, ``learning``)."""
        with self._lock:
            for k, v in gauges.items():
                setattr(self, k, v)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:.10g}" for labels, value in samples)

        with self._lock:
            per = [
                ("iotsentry_packets_ingested_total", "Packets ingested per source.", self.packets),
                ("iotsentry_flows_ingested_total", "Flows ingested per source.", self.flows),
                ("iotsentry_batches_total", "Batches processed per source.", self.batches),
            ]
            for name, help_, counter in per:
                family(
                    name,
                    "counter",
                    help_,
                    [(f'{{source="{_label(s)}"}}', n) for s, n in sorted(counter.items())],
                )
            family(
                "iotsentry_alerts_stored_total",
                "counter",
                "Alerts committed to the store per severity (1 high, 2 medium, 3 low, 4 info: notices).",
                [(f'{{severity="{s}"}}', n) for s, n in sorted(self.alerts_stored.items())],
            )
            family(
                "iotsentry_sink_errors_total",
                "counter",
                "Alerts a sink failed to take.",
                [("", self.sink_errors)],
            )
            family(
                "iotsentry_queue_depth", "gauge", "Batches waiting for the engine.", [("", self.queue_depth)]
            )
            family(
                "iotsentry_queue_capacity", "gauge", "Bound of the batch queue.", [("", self.queue_capacity)]
            )
            family(
                "iotsentry_learning",
                "gauge",
                "1 while the baseline is learned.",
                [("", float(self.learning))],
            )
            family("iotsentry_canary_runs_total", "counter", "Canary replays run.", [("", self.canary_runs)])
            cov = self.canary_detected / self.canary_classes if self.canary_classes else 0.0
            family(
                "iotsentry_canary_coverage",
                "gauge",
                "Share of canary attack classes detected in the last replay.",
                [("", cov)],
            )
            family(
                "iotsentry_last_batch_latency_seconds",
                "gauge",
                "Time from polling the last batch to its alerts being stored and sent.",
                [("", self.last_batch_latency_s)],
            )
        return "\n".join(lines) + "\n"


def metrics_router(metrics: Metrics) -> APIRouter:
    """A router serving ``GET /metrics`` for ``metrics`` (needs a token with the ``read`` scope)."""
    router = APIRouter(tags=["metrics"], dependencies=[Depends(require_read)])

    @router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of the monitor")
    def get_metrics() -> PlainTextResponse:
        """The monitor's counters in the Prometheus text format."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return router
