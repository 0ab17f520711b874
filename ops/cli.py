"""The ``civic-iot`` command line: one entry point for every process and tool."""

from __future__ import annotations

import logging
import subprocess
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alerts.cli import alerts_app
from civic_iot.logs import setup_logging
from civic_iot.registry import Device, load_registry, save_registry
from civic_iot.settings import REPO_ROOT, get_settings
from ops import broker
from ops.grafana import grafana_app
from simulator.cli import simulate

app = typer.Typer(help="civic-iot: civic disaster-monitoring IoT platform.", no_args_is_help=True)
stack_app = typer.Typer(help="The native stack: Mosquitto, Kafka (KRaft), InfluxDB 2.7.")
devices_app = typer.Typer(help="The device registry and the broker credentials made from it.")
app.add_typer(stack_app, name="stack")
app.add_typer(devices_app, name="devices")
app.add_typer(
    grafana_app, name="grafana", help="Provision Grafana (datasource, folder, dashboards)."
)
app.add_typer(alerts_app, name="alerts")
app.command("simulate")(simulate)
console = Console()


def _stack(command: str) -> None:
    rc = subprocess.call(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), command])  # noqa: S603,S607
    raise typer.Exit(rc)


@stack_app.command("up")
def stack_up() -> None:
    """Install what is missing, start and health-check every service (idempotent)."""
    _stack("up")


@stack_app.command("down")
def stack_down() -> None:
    """Stop every service; data is kept."""
    _stack("down")


@stack_app.command("status")
def stack_status() -> None:
    """One line per service: health, pid, log."""
    _stack("status")


@devices_app.command("sync")
def devices_sync(
    quiet: Annotated[bool, typer.Option("--quiet", help="print nothing on success")] = False,
) -> None:
    """Regenerate Mosquitto's password and ACL files from the registry."""
    settings = get_settings()
    registry = load_registry(settings.registry)
    out = broker.sync(registry, settings.data_dir)
    if not quiet:
        console.print(f"wrote {out}/passwd and {out}/acl for {len(registry)} devices")


@devices_app.command("list")
def devices_list(
    kind: Annotated[str | None, typer.Option(help="air, water or seismic")] = None,
) -> None:
    """List the registered devices."""
    registry = load_registry(get_settings().registry)
    table = Table("id", "kind", "sensor", "lat", "lon", "township")
    for d in registry:
        if kind is None or d.kind == kind:
            table.add_row(d.id, d.kind, d.sensor, f"{d.lat:.4f}", f"{d.lon:.4f}", d.township)
    console.print(table)


@devices_app.command("add")
def devices_add(
    device_id: Annotated[str, typer.Argument(help="unique device id")],
    kind: Annotated[str, typer.Option(help="air, water or seismic")],
    lat: Annotated[float, typer.Option(help="latitude, degrees WGS 84")],
    lon: Annotated[float, typer.Option(help="longitude, degrees WGS 84")],
    township: Annotated[str, typer.Option(help="township code from the registry")],
    sensor: Annotated[str, typer.Option(help="e.g. pm2_5, flood, river, rain")] = "",
) -> None:
    """Register a device and regenerate the broker credentials."""
    settings = get_settings()
    registry = load_registry(settings.registry)
    if registry.get(device_id) is not None:
        console.print(f"[red]device {device_id!r} is already registered[/red]")
        raise typer.Exit(1)
    device = Device.model_validate(
        {
            "id": device_id,
            "kind": kind,
            "lat": lat,
            "lon": lon,
            "township": township,
            "sensor": sensor,
        }
    )
    new = registry.model_copy(update={"devices": (*registry.devices, device)})
    type(registry).model_validate(new.model_dump())  # re-check townships and duplicates
    save_registry(new, settings.registry)
    broker.sync(new, settings.data_dir)
    console.print(
        f"registered {device_id}; broker credentials regenerated "
        "(a running broker picks them up on `civic-iot stack up`, which sends SIGHUP)"
    )


@app.command("ingest")
def ingest_cmd(
    instance: Annotated[
        str | None, typer.Option(help="stable instance id (MQTT session); default from settings")
    ] = None,
) -> None:
    """Run the ingest bridge: MQTT devices/+/+ -> validated readings -> Kafka."""
    import asyncio  # noqa: PLC0415

    from ingest.service import run  # noqa: PLC0415 - keep CLI start-up light

    settings = get_settings()
    if instance is not None:
        settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"instance": instance})}
        )
    setup_logging(settings.log_level)
    asyncio.run(run(settings))


@app.command("worker")
def worker_cmd() -> None:
    """Run a Faust processors worker (scale out: more workers, one web port each)."""
    from processors.cli import run_worker  # noqa: PLC0415 - keep CLI start-up light

    settings = get_settings()
    setup_logging(settings.log_level)
    run_worker(settings)


@app.command("demo")
def demo_cmd(
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="scenario name or path")
    ] = "demo",
    speed: Annotated[float, typer.Option(help="multiplies the scenario's time compression")] = 1.0,
    workers: Annotated[int, typer.Option(help="Faust workers to start")] = 1,
) -> None:
    """Stack up, ingest + worker(s) + alerts, a scenario from simulated devices, a summary."""
    from ops.demo import run_demo  # noqa: PLC0415

    settings = get_settings()
    logging.basicConfig(level="WARNING")
    if subprocess.call(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "up"]) != 0:  # noqa: S603,S607
        raise typer.Exit(1)
    raise typer.Exit(run_demo(settings, scenario=scenario, speed=speed, workers=workers))


@app.command("status")
def status_cmd() -> None:
    """The stack and every civic-iot process on this host, in one table."""
    from ops.status import collect  # noqa: PLC0415

    rows = collect(get_settings())
    table = Table("component", "state", "detail")
    for name, state, detail in rows:
        colour = "green" if state in {"healthy", "up"} else "red"
        table.add_row(name, f"[{colour}]{state}[/{colour}]", detail)
    console.print(table)
    raise typer.Exit(0 if all(r[1] in {"healthy", "up"} for r in rows) else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
