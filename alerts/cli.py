"""``civic-iot alerts ...``: run the alert service; acknowledge an alert and manage webhook
subscriptions through its HTTP API (with an API token: ``--token`` or ``CIVIC_API_TOKEN``)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from alerts.http import AckError, ApiClientError, ack_via_http, call_api
from civic_iot.logs import setup_logging
from civic_iot.settings import get_settings

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="The alert service: lifecycle, CAP 1.2, MQTT and webhook delivery.",
    no_args_is_help=True,
)
subscriptions_app = typer.Typer(
    help="Webhook subscriptions over the alert service's API (an agency manages its own).",
    no_args_is_help=True,
)
alerts_app.add_typer(subscriptions_app, name="subscriptions")

Token = Annotated[
    str,
    typer.Option(
        envvar="CIVIC_API_TOKEN",
        help="API token (civic-iot tokens create); default $CIVIC_API_TOKEN",
        show_default=False,
    ),
]
Url = Annotated[
    str | None,
    typer.Option(help="service base URL; default from CIVIC_ALERTS__HTTP_HOST/_PORT"),
]


def _base(url: str | None) -> str:
    if url is not None:
        return url
    return get_settings().alerts.base_url


def _call(url: str | None, method: str, path: str, token: str, body: Any = None) -> Any:
    try:
        return asyncio.run(call_api(_base(url), method, path, token, body))
    except ApiClientError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=1))


@alerts_app.command("run")
def run() -> None:
    """Run the alert service and its HTTP endpoint until SIGINT/SIGTERM."""
    from alerts.service import run_service  # noqa: PLC0415 - keep `ack` light

    settings = get_settings()
    setup_logging(settings.log_level)
    asyncio.run(run_service(settings))


@alerts_app.command("ack")
def ack(
    alert_id: Annotated[str, typer.Argument(help="the alert's alert_id (a UUID, see GET /alerts)")],
    token: Token,
    note: Annotated[str, typer.Option(help="free text kept with the acknowledgement")] = "",
    url: Url = None,
) -> None:
    """Acknowledge an open alert as the token's principal (an operator or admin)."""
    try:
        record = asyncio.run(ack_via_http(_base(url), alert_id, note, token=token))
    except AckError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(record, ensure_ascii=False))


@subscriptions_app.command("create")
def subscriptions_create(
    webhook_url: Annotated[str, typer.Argument(help="https URL to POST alerts to")],
    token: Token,
    hazard: Annotated[
        list[str] | None, typer.Option(help="a hazard wanted (repeat); none = all")
    ] = None,
    min_severity: Annotated[str, typer.Option(help="Minor, Moderate, Severe, Extreme")] = "Minor",
    township: Annotated[
        list[str] | None, typer.Option(help="a township code (repeat); none = everywhere")
    ] = None,
    polygon: Annotated[
        str | None, typer.Option(help="area as JSON [[lat, lon], ...] (instead of townships)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="cap or json")] = "cap",
    owner: Annotated[str | None, typer.Option(help="for another principal (admin only)")] = None,
    url: Url = None,
) -> None:
    """Create a subscription; prints it with its secret, shown this once."""
    body: dict[str, Any] = {
        "url": webhook_url,
        "hazards": hazard or [],
        "min_severity": min_severity,
        "townships": township or [],
        "format": fmt,
    }
    if polygon is not None:
        try:
            body["polygon"] = json.loads(polygon)
        except ValueError as exc:
            typer.echo(f"--polygon is not JSON: {exc}", err=True)
            raise typer.Exit(2) from exc
    if owner is not None:
        body["owner"] = owner
    _echo(_call(url, "POST", "/subscriptions", token, body))
    typer.echo("store the secret now: it is shown only this once", err=True)


@subscriptions_app.command("list")
def subscriptions_list(token: Token, url: Url = None) -> None:
    """Your subscriptions (an admin: everyone's), without secrets."""
    _echo(_call(url, "GET", "/subscriptions", token))


@subscriptions_app.command("rotate")
def subscriptions_rotate(
    sub_id: Annotated[str, typer.Argument(help="subscription id")], token: Token, url: Url = None
) -> None:
    """A new secret (shown once); the old one signs too for the grace period."""
    _echo(_call(url, "POST", f"/subscriptions/{sub_id}/rotate-secret", token, {}))
    typer.echo("store the secret now: it is shown only this once", err=True)


@subscriptions_app.command("delete")
def subscriptions_delete(
    sub_id: Annotated[str, typer.Argument(help="subscription id")], token: Token, url: Url = None
) -> None:
    """Delete a subscription: no webhook goes to it from now on."""
    _call(url, "DELETE", f"/subscriptions/{sub_id}", token)
    typer.echo(f"deleted {sub_id}")
