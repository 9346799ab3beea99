"""The server's drift checks: ``GET /v1/drift`` and the ``imagewise_drift_*`` Prometheus gauges.

The monitor (``imagewise.edge.drift.DriftMonitor``) is fed by the inference worker with each
batch's answers; the endpoint and the gauges read a snapshot of it, so a scrape never waits
for the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from imagewise.edge.drift import DriftMonitor
from imagewise.serve.guards import ServeError


class DriftCheck(BaseModel):
    name: str = Field(description="ood_share, mean_confidence or class_mix")
    value: float | None = Field(
        None,
        description="over the window: the share above the OOD threshold, the mean top "
        "probability, or the share of answers whose class would have to change to match the "
        "validation mix (null before the first check)",
    )
    reference: float | None = Field(None, description="the validation split's value")
    p_value: float | None = Field(None, description="the test's p-value at the last check")
    threshold: float = Field(description="the alarm starts when the p-value falls below it")
    alarm: bool
    since: str | None = Field(None, description="when the alarm started (ISO 8601, UTC)")
    since_image: int | None = Field(None, description="images seen when it started")
    alarms: int = Field(description="alarms this check raised since the server started")


class DriftResponse(BaseModel):
    window: int = Field(description="images each check looks at (the latest)")
    images_in_window: int
    images_seen: int = Field(description="images answered since the server started")
    checked_at: int | None = Field(None, description="images seen at the last check")
    alpha: float = Field(description="one check's false-alarm rate (all three tests)")
    check_every: int = Field(description="images between checks")
    alarm: bool = Field(description="whether any check's alarm is on")
    checks: list[DriftCheck]


def _monitor(request: Request) -> DriftMonitor:
    monitor = getattr(request.app.state, "drift", None)
    if monitor is None:
        raise ServeError(
            404, "drift checks are off on this server (serve a run folder, or an export that "
            "carries a drift reference, with --drift auto or on)",
        )  # fmt: skip
    return monitor


drift_router = APIRouter()


@drift_router.get("/v1/drift", response_model=DriftResponse)
async def drift(monitor: Annotated[DriftMonitor, Depends(_monitor)]) -> DriftResponse:
    """The rolling window's drift checks against the validation split: each check's value,
    the validation value, the p-value, the threshold, and whether its alarm is on."""
    return DriftResponse.model_validate(monitor.state().to_json())


class DriftCollector(Collector):
    """The monitor's state as gauges, read at each scrape."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.monitor.state()
        checks = {c.name: c for c in state.checks}
        values = {
            "ood_share": ("Share of the window's images above the OOD threshold", "ood_share"),
            "mean_confidence": ("Mean top probability over the window", "mean_confidence"),
        }
        for metric, (text, name) in values.items():
            value = checks[name].value
            yield _gauge(f"imagewise_drift_{metric}", text, None if value is None else value)
        mix = checks["class_mix"].p_value
        yield _gauge(
            "imagewise_drift_class_mix_pvalue",
            "Chi-square p-value of the window's predicted-class mix",
            None if mix is None else mix,
        )
        yield _gauge(
            "imagewise_drift_window_images", "Images in the drift window", state.images_in_window
        )
        p = GaugeMetricFamily(
            "imagewise_drift_pvalue",
            "Each drift check's p-value at the last check",
            labels=["check"],
        )
        alarm = GaugeMetricFamily(
            "imagewise_drift_alarm", "1 while a drift check's alarm is on", labels=["check"]
        )
        for check in state.checks:
            if check.p_value is not None:
                p.add_metric([check.name], check.p_value)
            alarm.add_metric([check.name], 1.0 if check.alarm else 0.0)
        yield p
        yield alarm


def _gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily:
    """A gauge without samples until there is a value (no made-up 0 before the first check)."""
    gauge = GaugeMetricFamily(name, text)
    if value is not None:
        gauge.add_metric([], value)
    return gauge
