"""``civic-iot simulate``: run a scenario against Mosquitto as the registered devices.

:func:`run_simulation` is the plain function behind the command (the demo calls it);
``simulate_app`` is a typer app with the single ``simulate`` command, for
``app.add_typer(simulate_app)`` or ``app.command("simulate")(simulate)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, get_settings
from civic_iot.thresholds import Thresholds, load_thresholds
from simulator.publisher import Progress, PublishReport, publish_all
from simulator.scenario import (
    Scenario,
    SimMessage,
    generate,
    load_scenario,
    scenario_names,
)

__all__ = ["SimulationResult", "plan_simulation", "run_simulation", "simulate", "simulate_app"]

logger = logging.getLogger(__name__)

simulate_app = typer.Typer(help="Publish a scenario as the registered devices would.")


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """A finished run: the scenario, what was sent and what the broker said."""

    scenario: Scenario
    start: datetime
    messages: list[SimMessage]
    report: PublishReport

    @property
    def expected_refused(self) -> Counter[str]:
        """Ingest refusals the run should cause, by reason (messages that reach ingest)."""
        return Counter(
            m.expected_reason
            for m in self.messages
            if m.expected_reason is not None and not m.broker_denied
        )

    @property
    def expected_accepted(self) -> int:
        """Messages ingest should accept."""
        return sum(1 for m in self.messages if m.expected_reason is None and not m.broker_denied)


def plan_simulation(
    scenario: str | Path | Scenario,
    *,
    registry: Registry,
    thresholds: Thresholds | None = None,
    speed: float = 1.0,
    seed: int | None = None,
    duration_s: float | None = None,
    sample_rate_hz: float | None = None,
    now: datetime | None = None,
) -> tuple[Scenario, datetime, list[SimMessage]]:
    """The messages of a run, without sending them.

    ``duration_s`` caps the wall time (s) at ``speed``; ``now`` (default: the clock)
    anchors event times so that no reading is in the future (:func:`aligned_start`).
    ``thresholds`` (default: the settings' file) give the river gauges' warning levels.
    """
    if thresholds is None:
        thresholds = load_thresholds(get_settings().thresholds, registry)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    until = sc.duration_s
    wall = sc.wall_duration_s(speed)
    if duration_s is not None and duration_s < wall:
        until = sc.scenario_time(duration_s, speed)
        wall = duration_s
    now = now if now is not None else datetime.now(UTC)
    # As aligned_start, for a possibly shortened run: its last instant lands at the
    # wall-clock moment it ends, so no reading is ever in the future.
    start = now + timedelta(seconds=wall - until)
    messages = generate(
        sc,
        registry,
        start=start,
        seed=seed,
        sample_rate_hz=sample_rate_hz,
        until_s=until,
        thresholds=thresholds,
    )
    return sc, start, messages


def run_simulation(
    scenario: str | Path | Scenario,
    *,
    settings: Settings | None = None,
    registry: Registry | None = None,
    speed: float = 1.0,
    seed: int | None = None,
    duration_s: float | None = None,
    sample_rate_hz: float | None = None,
    fast: bool = False,
    progress_cb: Callable[[Progress], None] | None = None,
) -> SimulationResult:
    """Generate a scenario's messages and publish them in (compressed) real time.

    Args:
        scenario: a shipped scenario name, a YAML path, or a loaded scenario.
        settings: the process settings (default: :func:`get_settings`).
        registry: the device network (default: ``settings.registry``).
        speed: multiplies the scenario's own time compression (2 = twice as fast).
        seed: overrides the scenario's seed.
        duration_s: stop after this many wall seconds.
        sample_rate_hz: seismic samples per second (<= 100), overriding the scenario.
        fast: no pacing: send as fast as the window allows.
        progress_cb: receives :class:`Progress` snapshots.
    """
    settings = settings if settings is not None else get_settings()
    registry = registry if registry is not None else load_registry(settings.registry)
    sc, start, messages = plan_simulation(
        scenario,
        registry=registry,
        thresholds=load_thresholds(settings.thresholds, registry),
        speed=speed,
        seed=seed,
        duration_s=duration_s,
        sample_rate_hz=sample_rate_hz,
    )
    logger.info(
        "simulate scenario=%s messages=%d wall_s=%.0f start=%s",
        sc.name,
        len(messages),
        messages[-1].at_s / speed if messages else 0.0,
        start.isoformat(),
    )
    report = publish_all(messages, settings, speed, progress_cb, fast=fast)
    return SimulationResult(sc, start, messages, report)


@simulate_app.command("simulate")
def simulate(
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="scenario name or YAML path")
    ] = "demo",
    speed: Annotated[
        float, typer.Option(help="multiplies the scenario's own time compression")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option(help="override the scenario's seed")] = None,
    duration: Annotated[
        float | None, typer.Option(help="stop after this many wall seconds")
    ] = None,
    sample_rate: Annotated[
        float | None, typer.Option(help="seismic samples per second, <= 100")
    ] = None,
    fast: Annotated[bool, typer.Option(help="no pacing: send as fast as possible")] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="publish over the broker's TLS listener (CIVIC_MQTT__TLS_PORT, "
            "CA CIVIC_MQTT__TLS_CA, default the local CA of deploy/stack.sh)",
        ),
    ] = False,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="list the shipped scenarios and exit")
    ] = False,
) -> None:
    """Publish a scenario's readings as the registered devices (own credentials, QoS 1)."""
    if list_scenarios:
        for name in scenario_names():
            sc = load_scenario(name)
            typer.echo(f"{name:12} {sc.wall_duration_s():6.0f} s  {sc.description}")
        return
    last = [0.0]

    def show(p: Progress) -> None:
        if p.elapsed_s - last[0] >= 5 or p.published == p.total:
            last[0] = p.elapsed_s
            typer.echo(
                f"{p.elapsed_s:6.1f} s  sent {p.published}/{p.total}  acked {p.acknowledged}"
                f"  failed {p.failed}  in flight {p.in_flight}  lag {p.lag_s:.2f} s"
            )

    settings = get_settings()
    if tls:
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"tls": True})}
        )
    try:
        result = run_simulation(
            scenario,
            settings=settings,
            speed=speed,
            seed=seed,
            duration_s=duration,
            sample_rate_hz=sample_rate,
            fast=fast,
            progress_cb=show,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        typer.echo(f"simulate: {exc}", err=True)
        raise typer.Exit(2) from None
    r = result.report
    typer.echo(
        f"scenario {result.scenario.name}: {r.total} messages from {r.devices} devices in "
        f"{r.elapsed_s:.1f} s; published {r.published}, acknowledged {r.acknowledged}, "
        f"failed {r.failed} {r.failures or ''}"
    )
    typer.echo(
        f"publish latency ms p50 {r.latency.p50_ms:.1f} p95 {r.latency.p95_ms:.1f} "
        f"max {r.latency.max_ms:.1f}; furthest behind schedule {r.max_lag_s:.2f} s"
    )
    typer.echo(
        f"expected: {result.expected_accepted} accepted by ingest, refused "
        f"{dict(result.expected_refused)}, broker-denied {r.denied}"
    )
    for a in result.scenario.expect.alerts:
        towns = ", ".join(a.townships) or "-"
        typer.echo(f"expected alert: {a.hazard} in {towns}" + (f" (x{a.count})" if a.count else ""))
