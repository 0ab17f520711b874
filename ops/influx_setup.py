"""Prepare InfluxDB 2.x: onboarding, buckets with retention, the seismic downsampling task.

Idempotent; run by ``deploy/stack.sh up`` (``python -m ops.influx_setup``). On a
first start it onboards the server with organisation ``CIVIC_INFLUX__ORG`` and a random
admin token written to ``<data dir>/secrets/influx-token`` (never to the repo).
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import urllib.request
from dataclasses import dataclass

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules

from civic_iot.settings import Settings, get_settings, influx_token

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
            i.bucket_seismic, i.seismic_retention_days * DAY_S, "raw seismic acceleration samples"
        ),
        BucketSpec(i.bucket_derived, 0, "rolling means, AQI, accumulations, intensities"),
        BucketSpec(i.bucket_alerts, 0, "issued alert messages and delivery results"),
    ]


DOWNSAMPLE_TASK = "civic-seismic-downsample-1m"


def downsample_flux(settings: Settings) -> str:
    """Per-station 1-minute peaks of the raw samples, kept in the long-lived bucket."""
    i = settings.influx
    return f"""from(bucket: "{i.bucket_seismic}")
  |> range(start: -task.every)
  |> filter(fn: (r) => r._measurement == "seismic_sample")
  |> map(fn: (r) => ({{r with _value: if r._value < 0.0 then -r._value else r._value}}))
  |> aggregateWindow(every: 1m, fn: max, createEmpty: false)
  |> set(key: "_measurement", value: "seismic_peak_1m")
  |> to(bucket: "{i.bucket_derived}", org: "{i.org}")
"""


def _onboard(settings: Settings) -> None:
    url = settings.influx.url.rstrip("/")
    with urllib.request.urlopen(f"{url}/api/v2/setup", timeout=10) as resp:  # noqa: S310
        allowed = json.load(resp).get("allowed", False)
    if not allowed:
        return
    token_path = settings.data_dir / "secrets" / "influx-token"
    token = (
        settings.influx.token.get_secret_value()
        if settings.influx.token is not None
        else secrets.token_urlsafe(32)
    )
    body = {
        "username": "civic-admin",
        "password": secrets.token_urlsafe(24),
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
    if settings.influx.token is None:
        token_path.parent.mkdir(parents=True, exist_ok=True)
        token_path.write_text(token, encoding="ascii")
        token_path.chmod(0o600)
    logger.info("influxdb onboarded org=%s", settings.influx.org)


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
        task.flux = f'option task = {{name: "{DOWNSAMPLE_TASK}", every: 1m}}\n{flux}'
        api.update_task(task)
        return
    org = client.organizations_api().find_organizations(org=settings.influx.org)[0]
    api.create_task_every(DOWNSAMPLE_TASK, flux, "1m", org)


def setup(settings: Settings) -> None:
    _onboard(settings)
    with InfluxDBClient(
        url=settings.influx.url, token=influx_token(settings), org=settings.influx.org
    ) as client:
        ensure_buckets(client, settings, bucket_specs(settings))
        ensure_task(client, settings)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    setup(get_settings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
