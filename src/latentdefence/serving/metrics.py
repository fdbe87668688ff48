"""Prometheus metrics of the service (prometheus-client), in a registry of the app's own (GET /metrics).

Requests by route template and status, latency, images per forward pass, images scored and flagged, the
flag rate against the calibrated false-positive rate, per-layer non-conformity, and the alarm's state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from .alarm import FlagRateCUSUM

PREFIX = "latentdefence"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The app's metrics; `observe_batch` is called by inference, `middleware` wraps the ASGI app."""

    def __init__(self, k: int | None, calibrated_fpr: float, alarm: FlagRateCUSUM) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Time to answer a request", ["route"],
                                 registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size_images", "Images per guarded forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.scored = Counter(f"{PREFIX}_images_scored", "Images the guarded model answered", registry=r)
        self.flagged = Counter(f"{PREFIX}_images_flagged", "Images the detector flagged as adversarial",
                               registry=r)
        self.layer = Histogram(f"{PREFIX}_layer_nonconformity", "Per-layer non-conformity of scored images (k-NN "
                               "detectors, Eq. 8: neighbours of another class than F's; else the detector's own "
                               "layer score)", ["tap"], registry=r,
                               buckets=tuple(range(k + 1)) if k else Histogram.DEFAULT_BUCKETS)
        Gauge(f"{PREFIX}_flag_rate", "Flagged / scored images since start", registry=r).set_function(
            lambda: alarm.flagged / max(alarm.observed, 1))
        Gauge(f"{PREFIX}_calibrated_fpr", "False-positive rate of the detector on its calibration set",
              registry=r).set(calibrated_fpr)
        self._alarm_gauges(alarm)

    def _alarm_gauges(self, alarm: FlagRateCUSUM) -> None:
        r = self.registry
        for name, text, read in [
                ("alarm_statistic", "CUSUM statistic of the flag stream", lambda: alarm.statistic),
                ("alarm_threshold", "CUSUM threshold h = log(1 / false-alarm rate)", lambda: alarm.threshold),
                ("alarm_active", "1 while the flag rate alarm is raised", lambda: float(alarm.in_alarm)),
                ("alarm_raised", "Times the flag rate alarm was raised since start", lambda: float(alarm.alarms)),
                ("alarm_null_rate", "Flag rate p0 of clean traffic the alarm tests against", lambda: alarm.p0)]:
            Gauge(f"{PREFIX}_{name}", text, registry=r).set_function(read)

    def track_verdicts(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Operators' reviews of flagged inputs, read from the audit store once per scrape (every replica's)."""
        self.registry.register(_Verdicts(counts))

    def observe_batch(self, flags: torch.Tensor, per_layer: dict[str, torch.Tensor]) -> None:
        """One guarded forward pass: flags (B,) bool and per-layer scores (B,)."""
        self.batch_size.observe(len(flags))
        self.scored.inc(len(flags))
        self.flagged.inc(int(flags.sum()))
        for tap, scores in per_layer.items():
            child = self.layer.labels(tap)
            for value in scores.tolist():
                child.observe(value)

    def middleware(self, app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """ASGI middleware counting every HTTP request by route template, method and status."""

        async def counted(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                          send: Callable[[Any], Awaitable[None]]) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start, status = time.perf_counter(), "500"

            async def sending(message: MutableMapping[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = str(int(message["status"]))
                await send(message)

            try:
                await app(scope, receive, sending)
            except ClientDisconnect:      # the client left before the answer: not a server error
                status = "client_disconnect"
                raise
            finally:
                route = _route_of(scope)
                method = scope["method"] if scope["method"] in HTTP_METHODS else "other"   # a closed label set
                self.requests.labels(route, method, status).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        return counted


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def _route_of(scope: MutableMapping[str, Any]) -> str:
    """The route template (`/v2/models/{model}/infer`), also for requests a middleware answered before routing;
    "unmatched" for paths no route serves (never the raw path: label values must stay few)."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in scope["app"].router.routes if r.matches(scope)[0] == Match.FULL), None) \
            if "app" in scope else None
    return getattr(route, "path", "unmatched")


class _Verdicts(Collector):
    """Both verdict counts from one audit-store query per scrape."""

    GAUGES = (("audit_confirmed", "confirmed", "Flagged inputs an operator confirmed as attacks (audit store)"),
              ("audit_false_positives", "false_positive",
               "Flagged inputs an operator marked as false positives (audit store)"))

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts()
        for name, verdict, text in self.GAUGES:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=counts[verdict])
