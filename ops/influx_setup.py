"""Prepare InfluxDB 2.x: onboarding, buckets with retention, the seismic downsampling task,
and one least-privilege token per client.

Idempotent; run by ``deploy/stack.sh up`` and docker-compose's setup (``python -m
ops.influx_setup``). On a first start it onboards the server with organisation
``CIVIC_INFLUX__ORG``, a random admin token written to ``<data dir>/secrets/influx-token``
and a random password for user ``civic-admin`` in ``secrets/influx-admin-password`` (never
to the repo; both 0600 from the start).

Then each client of :data:`civic_iot.settings.InfluxClient` gets a token of its own in
``secrets/influx-token-<client>`` (:func:`token_specs`): the processors may write the
buckets the storage schema says they write and nothing else (no read, no delete); the
alert service may write ``alerts``; Grafana and the read API may read the four buckets.
A token is kept while it still exists with the same permissions (the buckets' ids
included: a bucket made again needs a new token), else made again and the old one
deleted. ``--rotate CLIENT`` (or ``all``) replaces one on purpose; the process using it
reads it when it starts, so restart it afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import secrets
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.authorization import Authorization
from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules
from influxdb_client.domain.permission import Permission
from influxdb_client.domain.permission_resource import PermissionResource

from civic_iot.files import write_atomic
from civic_iot.settings import (
    InfluxClient,
    Settings,
    get_settings,
    influx_token,
    influx_token_path,
)
from civic_iot.storage import schema

logger = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    retention_s: int  # 0 = keep forever
    description: str


def bucket_specs(settings: Settings) -> list[BucketSpec]:
    i = settings.influx
    return [
        BucketSpec(
            i.bucket_readings, i.readings_retention_days * DAY_S, "raw air and water readings"
        ),
        BucketSpec(
            i.bucket_seismic, i.seismic_retention_days * DAY_S, "raw seismic packets, packed"
        ),
        BucketSpec(i.bucket_derived, 0, "rolling means, AQI, accumulations, intensities"),
        BucketSpec(i.bucket_alerts, 0, "issued alert messages and delivery results"),
    ]


DOWNSAMPLE_TASK = "civic-seismic-downsample-1m"


def downsample_flux(settings: Settings) -> str:
    """Per-station 1-minute peaks of the raw samples, kept in the long-lived bucket.

    Read from the packets' peak fields (``x_peak_gal`` ...: each packet's largest absolute
    sample) without unpacking a waveform; written as ``seismic_peak_1m``'s ``x_gal`` ...
    A packet counts in the minute of its first sample."""
    i = settings.influx
    peaks = " or ".join(f'r._field == "{c}_peak_gal"' for c in "xyz")
    # x_peak_gal -> x_gal ... (no import: the task's options go before the script)
    rename = " else ".join(f'if r._field == "{c}_peak_gal" then "{c}_gal"' for c in "xyz")
    return f"""from(bucket: "{i.bucket_seismic}")
  |> range(start: -task.every)
  |> filter(fn: (r) => r._measurement == "{schema.SEISMIC_PACKET.name}")
  |> filter(fn: (r) => {peaks})
  |> aggregateWindow(every: 1m, fn: max, createEmpty: false)
  |> map(fn: (r) => ({{r with _field: {rename} else r._field}}))
  |> set(key: "_measurement", value: "{schema.SEISMIC_PEAK_1M.name}")
  |> to(bucket: "{i.bucket_derived}", org: "{i.org}")
"""


def task_flux(settings: Settings) -> str:
    """The downsampling task's whole script: its options, then :func:`downsample_flux`."""
    return f'option task = {{name: "{DOWNSAMPLE_TASK}", every: 1m}}\n{downsample_flux(settings)}'


def _onboard(settings: Settings) -> None:
    url = settings.influx.url.rstrip("/")
    with urllib.request.urlopen(f"{url}/api/v2/setup", timeout=10) as resp:  # noqa: S310
        allowed = json.load(resp).get("allowed", False)
    if not allowed:
        return
    token = (
        settings.influx.token.get_secret_value()
        if settings.influx.token is not None
        else secrets.token_urlsafe(32)
    )
    password = secrets.token_urlsafe(24)
    body = {
        "username": "civic-admin",
        "password": password,
        "org": settings.influx.org,
        "bucket": settings.influx.bucket_readings,
        "token": token,
    }
    req = urllib.request.Request(  # noqa: S310 - URL is the configured InfluxDB
        f"{url}/api/v2/setup",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310
        pass
    secret_dir(settings.data_dir)
    if settings.influx.token is None:
        write_atomic(influx_token_path(settings.data_dir), token)
    # For the InfluxDB UI (docker-compose's image has it) and the influx CLI.
    write_atomic(settings.data_dir / "secrets" / "influx-admin-password", password)
    logger.info("influxdb onboarded org=%s", settings.influx.org)


def secret_dir(data_dir: Path) -> Path:
    """``<data dir>/secrets``, created 0700."""
    path = data_dir / "secrets"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def ensure_buckets(client: InfluxDBClient, settings: Settings, specs: list[BucketSpec]) -> None:
    """Create missing buckets and set retention on existing ones."""
    api = client.buckets_api()
    org = client.organizations_api().find_organizations(org=settings.influx.org)[0]
    for spec in specs:
        rules = BucketRetentionRules(type="expire", every_seconds=spec.retention_s)
        bucket = api.find_bucket_by_name(spec.name)
        if bucket is None:
            api.create_bucket(
                bucket_name=spec.name,
                retention_rules=rules,
                org_id=org.id,
                description=spec.description,
            )
            logger.info(
                "influxdb bucket created name=%s retention_s=%d", spec.name, rules.every_seconds
            )
        else:
            bucket.retention_rules = [rules]
            api.update_bucket(bucket)


def ensure_task(client: InfluxDBClient, settings: Settings) -> None:
    api = client.tasks_api()
    flux = downsample_flux(settings)
    existing = api.find_tasks(name=DOWNSAMPLE_TASK)
    if existing:
        task = existing[0]
        task.flux = task_flux(settings)
        api.update_task(task)
        return
    org = client.organizations_api().find_organizations(org=settings.influx.org)[0]
    api.create_task_every(DOWNSAMPLE_TASK, flux, "1m", org)


Action = Literal["read", "write"]

#: Who writes what, as the storage schema's ``written_by`` says it.
_WRITERS: dict[InfluxClient, str] = {"processors": "processors", "alerts": "alert service"}


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """What one client's token may do: one action on some buckets (by name)."""

    client: InfluxClient
    action: Action
    buckets: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"civic-iot {self.client}: {self.action} {', '.join(self.buckets)}"


def written_by(client: InfluxClient, settings: Settings) -> tuple[str, ...]:
    """The buckets (configured names) holding a measurement ``client`` writes, in the
    schema's order: the one place that says who writes what."""
    roles = dict.fromkeys(
        m.bucket for m in schema.MEASUREMENTS if m.written_by.startswith(_WRITERS[client])
    )
    return tuple(getattr(settings.influx, f"bucket_{role}") for role in roles)


def token_specs(settings: Settings) -> list[TokenSpec]:
    """Every client's token: writers write only their buckets, readers only read."""
    every = tuple(b.name for b in bucket_specs(settings))
    return [
        TokenSpec("processors", "write", written_by("processors", settings)),
        TokenSpec("alerts", "write", written_by("alerts", settings)),
        TokenSpec("grafana", "read", every),
        TokenSpec("api", "read", every),
    ]


def fingerprint(token: str) -> str:
    """A short digest of a token, put in its authorization's description: finds the
    authorization a token file holds even where InfluxDB does not list token values."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _grants(auth: Authorization) -> set[tuple[str, str]]:
    return {(p.action, f"{p.resource.type}/{p.resource.id}") for p in auth.permissions or []}


def ensure_tokens(
    client: InfluxDBClient,
    settings: Settings,
    rotate: Sequence[InfluxClient] = (),
) -> dict[InfluxClient, str]:
    """Each client's token file under ``<data dir>/secrets`` (0600 from the start), with
    the permissions of :func:`token_specs`; returns what happened to each (``kept``,
    ``created``, ``replaced``). Only the authorization a file held is ever deleted, so
    several data dirs may share one InfluxDB."""
    org = client.organizations_api().find_organizations(org=settings.influx.org)[0]
    api = client.authorizations_api()
    auths = api.find_authorizations(org_id=org.id)
    buckets = client.buckets_api()
    secret_dir(settings.data_dir)
    done: dict[InfluxClient, str] = {}
    for spec in token_specs(settings):
        ids = []
        for name in spec.buckets:
            bucket = buckets.find_bucket_by_name(name)
            if bucket is None:
                msg = f"influxdb: bucket {name!r} for the {spec.client} token does not exist"
                raise RuntimeError(msg)
            ids.append(bucket.id)
        want = {(spec.action, f"buckets/{i}") for i in ids}
        path = influx_token_path(settings.data_dir, spec.client)
        current = path.read_text(encoding="ascii").strip() if path.exists() else ""
        mark = f"[{fingerprint(current)}]" if current else None
        held = next((a for a in auths if mark and (a.description or "").endswith(mark)), None)
        if (
            held is not None
            and held.status == "active"
            and _grants(held) == want
            and spec.client not in rotate
        ):
            done[spec.client] = "kept"
            continue
        permissions = [
            Permission(
                action=spec.action,
                resource=PermissionResource(type="buckets", id=i, org_id=org.id),
            )
            for i in ids
        ]
        # InfluxDB makes the token; its fingerprint goes in the description afterwards.
        made = api.create_authorization(
            authorization=Authorization(
                org_id=org.id, permissions=permissions, description=spec.description
            )
        )
        made.description = f"{spec.description} [{fingerprint(made.token)}]"
        api.update_authorization(made)
        write_atomic(path, made.token)
        if held is not None:
            api.delete_authorization(held)
        done[spec.client] = "created" if held is None else "replaced"
        logger.info(
            "influxdb token %s client=%s %s buckets=%s",
            done[spec.client],
            spec.client,
            spec.action,
            ",".join(spec.buckets),
        )
    return done


def setup(settings: Settings, rotate: Sequence[InfluxClient] = ()) -> dict[InfluxClient, str]:
    """Onboarding, buckets, the downsampling task and the clients' tokens (idempotent)."""
    _onboard(settings)
    with InfluxDBClient(
        url=settings.influx.url, token=influx_token(settings), org=settings.influx.org
    ) as client:
        ensure_buckets(client, settings, bucket_specs(settings))
        ensure_task(client, settings)
        return ensure_tokens(client, settings, rotate)


def main(argv: Sequence[str] | None = None) -> int:
    clients: tuple[InfluxClient, ...] = get_args(InfluxClient)
    parser = argparse.ArgumentParser(
        prog="python -m ops.influx_setup",
        description="InfluxDB onboarding, buckets, tasks and the clients' tokens (idempotent)",
    )
    parser.add_argument(
        "--rotate",
        action="append",
        choices=[*clients, "all"],
        default=[],
        help="replace this client's token (repeat; restart the client afterwards)",
    )
    args = parser.parse_args(argv)
    rotate = clients if "all" in args.rotate else tuple(args.rotate)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    setup(get_settings(), rotate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
