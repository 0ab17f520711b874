"""The ``civic-iot`` command line: one entry point for every process and tool."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alerts.cli import alerts_app
from civic_iot.auth import ROLES, TokenStore
from civic_iot.logs import setup_logging
from civic_iot.registry import load_registry
from civic_iot.settings import REPO_ROOT, get_settings
from civic_iot.topology import TABLES, Topology
from ops import broker, devices
from ops.grafana import grafana_app
from simulator.cli import simulate

app = typer.Typer(help="civic-iot: civic disaster-monitoring IoT platform.", no_args_is_help=True)
stack_app = typer.Typer(help="The native stack: Mosquitto, Kafka (KRaft), InfluxDB 2.7.")
devices_app = typer.Typer(help="The device registry and the broker credentials made from it.")
topics_app = typer.Typer(help="A deployment's Kafka topics, by prefix (civic_iot/topology.py).")
app.add_typer(stack_app, name="stack")
app.add_typer(devices_app, name="devices")
app.add_typer(topics_app, name="topics")
tokens_app = typer.Typer(help="API tokens for the HTTP APIs (civic_iot/auth.py).")
app.add_typer(tokens_app, name="tokens")
app.add_typer(
    grafana_app, name="grafana", help="Provision Grafana (datasource, folder, dashboards)."
)
app.add_typer(alerts_app, name="alerts")
api_app = typer.Typer(help="The read API, SensorThings and live feeds (package api).")
app.add_typer(api_app, name="api")
app.command("simulate")(simulate)
# soft_wrap: a refusal's long lines stay whole (tables still fit the terminal).
console = Console(soft_wrap=True)


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


def _refused(exc: ValueError) -> typer.Exit:
    """Print a refusal (every problem on its own line) and the exit code to return."""
    console.print(f"[red]{escape(str(exc))}[/red]")
    return typer.Exit(1)


def _report_reload(change: devices.Change) -> None:
    if change.reloaded_pid is not None:
        console.print(
            f"broker (pid {change.reloaded_pid}) reloaded its credentials (SIGHUP); "
            "nothing was restarted"
        )
    else:
        console.print(
            "no running broker for this data dir (no live pid in "
            f"{broker.broker_dir(get_settings().data_dir) / 'mosquitto.pid'}): the files are "
            "written and a broker reads them when it starts (in Docker: "
            "`docker compose kill -s HUP mosquitto`)"
        )


@devices_app.command("sync")
def devices_sync(
    quiet: Annotated[bool, typer.Option("--quiet", help="print nothing on success")] = False,
) -> None:
    """Regenerate Mosquitto's password and ACL files from the registry; reload the broker."""
    settings = get_settings()
    try:
        change = devices.sync(settings.registry, settings.data_dir)
    except ValueError as exc:
        raise _refused(exc) from exc
    if not quiet:
        out = broker.broker_dir(settings.data_dir)
        console.print(
            f"wrote {out}/passwd and {out}/acl for {change.registry_size} devices "
            f"({change.hashed} password hashes computed, the others kept)"
        )
        _report_reload(change)


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
    device_id: Annotated[
        str | None, typer.Argument(help="unique device id (one device; or use --file)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="devices to add: .yaml (a list, or a 'devices:' list), .csv (columns "
            f"{', '.join(devices.CSV_COLUMNS)}) or .jsonl (one JSON object a line)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="air, water or seismic")] = None,
    lat: Annotated[float | None, typer.Option(help="latitude, degrees WGS 84")] = None,
    lon: Annotated[float | None, typer.Option(help="longitude, degrees WGS 84")] = None,
    township: Annotated[str | None, typer.Option(help="township code from the registry")] = None,
    sensor: Annotated[str | None, typer.Option(help="e.g. pm2_5, flood, river, rain")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check the devices, change nothing")
    ] = False,
) -> None:
    """Register devices, write the broker credentials and reload the broker (SIGHUP).

    The whole batch is checked first; one bad row refuses it, naming every bad row.
    """
    settings = get_settings()
    one = {"kind": kind, "lat": lat, "lon": lon, "township": township, "sensor": sensor}
    if (file is None) == (device_id is None):
        console.print("[red]give either one DEVICE_ID with its options, or --file[/red]")
        raise typer.Exit(2)
    if file is not None and any(v is not None for v in one.values()):
        console.print(
            "[red]--kind/--lat/--lon/--township/--sensor go with DEVICE_ID, not with --file[/red]"
        )
        raise typer.Exit(2)
    try:
        rows = (
            devices.read_device_rows(file)
            if file is not None
            else devices.single_row(id=device_id, **one)
        )
        change = devices.add(settings.registry, settings.data_dir, rows, dry_run=dry_run)
    except ValueError as exc:
        raise _refused(exc) from exc
    names = ", ".join(change.devices[:5]) + (" ..." if len(change.devices) > 5 else "")
    if dry_run:
        console.print(f"{len(change.devices)} device(s) would be added ({names}); nothing changed")
        return
    console.print(
        f"registered {len(change.devices)} device(s) ({names}); the registry has "
        f"{change.registry_size}; {change.hashed} password hash(es) computed, the others kept"
    )
    _report_reload(change)


@devices_app.command("remove")
def devices_remove(
    device_ids: Annotated[list[str], typer.Argument(help="registered device ids")],
) -> None:
    """Unregister devices and reload the broker: their credentials stop working."""
    settings = get_settings()
    try:
        change = devices.remove(settings.registry, settings.data_dir, device_ids)
    except ValueError as exc:
        raise _refused(exc) from exc
    console.print(
        f"removed {len(change.devices)} device(s) ({', '.join(change.devices)}); "
        f"the registry has {change.registry_size}"
    )
    _report_reload(change)


def _topology(prefix: str | None) -> Topology:
    topology = Topology.of(get_settings())
    return topology if prefix is None else topology.with_prefix(prefix)


_PREFIX_HELP = "deployment prefix (default CIVIC_KAFKA__TOPIC_PREFIX; '' is production)"


@tokens_app.command("create")
def tokens_create(
    principal: Annotated[str, typer.Argument(help="who the token is for: an agency id, a name")],
    role: Annotated[str, typer.Option(help="agency, operator or admin")],
    note: Annotated[str, typer.Option(help="what it is for (kept with it)")] = "",
) -> None:
    """Issue a token; it is printed once and never stored (only its hash is)."""
    if role not in ROLES:
        console.print(f"[red]role {role!r} is not one of {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)
    store = TokenStore.at(get_settings().tokens_file)
    try:
        record, token = store.issue(principal, role, note)
    except ValidationError as exc:
        console.print(f"[red]{exc.errors(include_url=False)[0]['msg']}[/red]")
        raise typer.Exit(2) from None
    typer.echo(token)
    typer.echo(
        f"token {record.id} for {record.principal} (role {record.role}); store it now: "
        "it is shown only this once",
        err=True,
    )


@tokens_app.command("list")
def tokens_list() -> None:
    """Every token issued: id, principal, role, created, revoked (never a secret)."""
    table = Table("id", "principal", "role", "created", "revoked", "note")
    for r in TokenStore.at(get_settings().tokens_file).records():
        revoked = r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else ""
        table.add_row(
            r.id, r.principal, r.role, r.created_at.isoformat(timespec="seconds"), revoked, r.note
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_ids: Annotated[list[str], typer.Argument(help="token ids (see `tokens list`)")],
) -> None:
    """Revoke tokens at once: the running services refuse them from their next request."""
    try:
        done = TokenStore.at(get_settings().tokens_file).revoke(token_ids)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(1) from None
    console.print(f"revoked {len(done)} token(s)" + (f": {', '.join(done)}" if done else ""))


@topics_app.command("create")
def topics_create(
    prefix: Annotated[str | None, typer.Option(help=_PREFIX_HELP)] = None,
) -> None:
    """Create the deployment's missing topics (idempotent)."""
    from civic_iot.kafka_admin import ensure_topics  # noqa: PLC0415 - keep CLI start-up light

    topology = _topology(prefix)
    created = asyncio.run(ensure_topics(get_settings().kafka.bootstrap, topology))
    for name in created:
        console.print(f"created {name}")
    console.print(
        f"{len(created)} topic(s) created, {len(topology.specs()) - len(created)} already there "
        f"(prefix {topology.prefix!r})"
    )


@topics_app.command("list")
def topics_list(
    prefix: Annotated[str | None, typer.Option(help=_PREFIX_HELP)] = None,
) -> None:
    """The deployment's topics with their partitions: the topology's (missing ones
    marked) and, for a prefixed deployment, every other topic under the prefix (Faust's
    changelogs)."""
    from civic_iot.kafka_admin import (  # noqa: PLC0415 - keep CLI start-up light
        deployment_topics,
        partition_counts,
        wait_for_topics,
    )

    topology = _topology(prefix)
    bootstrap = get_settings().kafka.bootstrap
    names = topology_topic_names(topology)
    if topology.prefix:
        names += [t for t in asyncio.run(deployment_topics(bootstrap, topology)) if t not in names]
    # Describe only topics that exist: a metadata request for a missing one creates it
    # when the broker has auto.create.topics.enable (the native stack's has, for Faust).
    missing = set(asyncio.run(wait_for_topics(bootstrap, names, timeout_s=0)))
    counts = asyncio.run(partition_counts(bootstrap, [n for n in names if n not in missing]))
    table = Table("topic", "partitions", title=f"topics of prefix {topology.prefix!r}")
    for name in names:
        table.add_row(name, str(counts[name]) if name in counts else "[red]missing[/red]")
    console.print(table)


@topics_app.command("delete")
def topics_delete(
    prefix: Annotated[str, typer.Option(help="the deployment prefix (never '' = production)")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete every topic of a prefixed deployment (a test or demo run)."""
    from civic_iot.kafka_admin import delete_topics, deployment_topics  # noqa: PLC0415

    problem = delete_refusal(prefix)
    if problem:
        console.print(f"[red]{escape(problem)}[/red]")
        raise typer.Exit(1)
    topology = _topology(prefix)
    bootstrap = get_settings().kafka.bootstrap
    names = asyncio.run(deployment_topics(bootstrap, topology))
    if not names:
        console.print(f"no topic starts with {prefix!r}")
        return
    if not yes:
        console.print("\n".join(names))
        typer.confirm(f"delete these {len(names)} topics?", abort=True)
    deleted = asyncio.run(delete_topics(bootstrap, topology))
    console.print(f"deleted {len(deleted)} topic(s) with prefix {prefix!r}")


def topology_topic_names(topology: Topology) -> list[str]:
    """The topics a deployment's processes use: the topology's and the processors'
    changelogs."""
    return [s.name for s in topology.specs()] + [topology.changelog(t) for t in TABLES]


def delete_refusal(prefix: str) -> str | None:
    """Why topics by this prefix must not be deleted: the empty prefix is production, and
    a prefix that starts a production topic's name (``a`` of ``alerts``) would take it too."""
    if not prefix:
        return "refused: the empty prefix is the production deployment"
    production = [n for n in topology_topic_names(Topology()) if n.startswith(prefix)]
    if production:
        return (
            f"refused: prefix {prefix!r} also matches production topics "
            f"{', '.join(production[:5])}; use the deployment's whole prefix (e.g. 'demo20260101.')"
        )
    return None


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


@api_app.command("run")
def api_run(
    host: Annotated[str | None, typer.Option(help="bind address; default CIVIC_API__HOST")] = None,
    port: Annotated[int | None, typer.Option(help="port; default CIVIC_API__PORT")] = None,
) -> None:
    """Serve the read API, SensorThings (/sta/v1.1, /sta/v1.0), the live push (/live),
    the operations console (/console/) and /openapi.json."""
    from api.server import run  # noqa: PLC0415 - keep CLI start-up light

    settings = get_settings()
    changes = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if changes:
        settings = settings.model_copy(update={"api": settings.api.model_copy(update=changes)})
    setup_logging(settings.log_level)
    run(settings)


@app.command("demo")
def demo_cmd(
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="scenario name or path")
    ] = "demo",
    speed: Annotated[float, typer.Option(help="multiplies the scenario's time compression")] = 1.0,
    workers: Annotated[
        int, typer.Option(help="bulk Faust workers to start (beside one seismic worker)")
    ] = 1,
) -> None:
    """Stack up, ingest + worker(s) + alerts + the API, a scenario from simulated devices
    (the operations console's URL is printed), a summary."""
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
