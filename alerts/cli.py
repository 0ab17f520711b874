"""``civic-iot alerts ...``: run the alert service, acknowledge an alert."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from alerts.http import AckError, ack_via_http
from civic_iot.logs import setup_logging
from civic_iot.settings import get_settings

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="The alert service: lifecycle, CAP 1.2, MQTT and webhook delivery.",
    no_args_is_help=True,
)


@alerts_app.command("run")
def run() -> None:
    """Run the alert service and its HTTP endpoint until SIGINT/SIGTERM."""
    from alerts.service import run_service  # noqa: PLC0415 - keep `ack` light

    settings = get_settings()
    setup_logging(settings.log_level)
    asyncio.run(run_service(settings))


@alerts_app.command("ack")
def ack(
    alert_id: Annotated[str, typer.Argument(help="alert id (or hazard:area key)")],
    by: Annotated[str, typer.Option("--by", help="who acknowledges (operator name)")],
    note: Annotated[str, typer.Option(help="free text kept with the acknowledgement")] = "",
    url: Annotated[
        str | None,
        typer.Option(help="service base URL; default from CIVIC_ALERTS__HTTP_HOST/_PORT"),
    ] = None,
) -> None:
    """Acknowledge an open alert through the running service's HTTP endpoint."""
    if url is None:
        a = get_settings().alerts
        url = f"http://{a.http_host}:{a.http_port}"
    try:
        record = asyncio.run(ack_via_http(url, alert_id, by, note))
    except AckError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(record, ensure_ascii=False))
