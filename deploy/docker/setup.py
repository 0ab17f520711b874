"""docker-compose's one-shot setup: every secret generated here, each service handed only
its own.

    docker compose up -d                          # runs this first, then the services
    docker compose run --rm setup devices add --file /data/new.csv   # a civic-iot command,
                                                  # then this setup again (idempotent)

It runs as root in the project's image with the ``civic-data`` volume at ``/data`` (the
setup's data dir: the device secret, the InfluxDB admin token and password, the local CA
and its key, the registry, none of which any other container sees) and, beside it:

- the broker's volume at ``/data/mosquitto`` (``mosquitto.conf``, ``passwd``, ``acl``, its
  copy of the TLS certificate and key, persistence), owned by the eclipse-mosquitto image's
  ``mosquitto`` account (uid 1883), which the broker drops root for;
- one volume per service (:data:`HANDOUT`) under ``/handout/<service>``, mounted as that
  service's own data dir (or secrets folder), holding only the files it needs, owned by
  the account it runs as, 0600 (the CA certificate and the registry, public, 0644).

Steps, each idempotent: registry seeded from the image, broker configuration and TLS
(``ops.broker.prepare``: only the TLS listener 8883, for every interface of the container;
the certificate names ``mosquitto``, ``localhost``, ``127.0.0.1`` and
``$CIVIC_MQTT_TLS_HOSTS``), ``passwd``/``acl`` from the registry (which refuses a device
named like a service account), Kafka topics, InfluxDB (onboarding, buckets, the task, one
token per client), Grafana's admin password, then the hand-out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from civic_iot.files import write_atomic
from civic_iot.kafka_admin import ensure_topics
from civic_iot.registry import load_registry
from civic_iot.settings import REPO_ROOT, Settings, get_settings
from civic_iot.topology import Topology
from ops import broker
from ops.influx_setup import setup as influx_setup
from ops.mark_key import ensure_mark_key

logger = logging.getLogger("civic.setup")

#: The uid and gid of the accounts in the images: ``civic`` in ours (Dockerfile),
#: ``mosquitto`` in eclipse-mosquitto, ``grafana`` in grafana/grafana (group root).
CIVIC_UID = 10001
MOSQUITTO_UID = 1883
GRAFANA_UID, GRAFANA_GID = 472, 0

HANDOUT_ROOT = Path("/handout")
#: The account the broker drops root for (the eclipse-mosquitto image's).
BROKER_USER = "mosquitto"


def broker_listeners(settings: Settings) -> list[broker.Listener]:
    """One listener, TLS, on every interface of the broker's container (the host
    publishes it on CIVIC_PUBLISH_HOST); no plain MQTT at all."""
    return [broker.Listener(settings.mqtt.tls_port, None, tls=True)]


def broker_hosts(settings: Settings, extra: str = "") -> list[str]:
    """The names the broker's certificate carries: its name on the compose network,
    the host's loopback, and ``CIVIC_MQTT_TLS_HOSTS`` (comma-separated)."""
    names = [settings.mqtt.host, "localhost", "127.0.0.1", *(h for h in extra.split(",") if h)]
    return list(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Handout:
    """Files copied from the setup's data dir into a service's own volume."""

    #: Path in the setup's data dir -> path in the service's volume.
    files: dict[str, str]
    uid: int = CIVIC_UID
    gid: int = CIVIC_UID


#: What each service gets, by the name of its volume's folder under ``/handout``.
#: ``tests/unit/test_deploy.py`` checks it against docker-compose.yml.
HANDOUT: dict[str, Handout] = {
    "ingest": Handout(
        {
            "devices.yaml": "devices.yaml",
            "secrets/mqtt-civic-ingest": "secrets/mqtt-civic-ingest",
            "secrets/kafka-mark-key": "secrets/kafka-mark-key",
            "tls/ca.crt": "tls/ca.crt",
        }
    ),
    "worker": Handout(
        {
            "devices.yaml": "devices.yaml",
            "secrets/influx-token-processors": "secrets/influx-token-processors",
            "secrets/kafka-mark-key": "secrets/kafka-mark-key",
        }
    ),
    "alerts": Handout(
        {
            "secrets/mqtt-civic-alerts": "secrets/mqtt-civic-alerts",
            "secrets/influx-token-alerts": "secrets/influx-token-alerts",
            "tls/ca.crt": "tls/ca.crt",
        }
    ),
    # Read by deploy/grafana/start.sh, not by civic-iot code.
    "grafana": Handout(
        {
            "secrets/grafana-admin-password": "admin-password",
            "secrets/influx-token-grafana": "influx-token",
        },
        uid=GRAFANA_UID,
        gid=GRAFANA_GID,
    ),
}

#: Files anyone may read (everything else is 0600).
PUBLIC = {"devices.yaml", "tls/ca.crt"}


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """``chown -R``: the account a container runs as owns its volume."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def seed_registry(settings: Settings) -> None:
    """The registry lives in the volume, so that ``devices add`` outlives a container;
    the first setup copies the image's ``deploy/devices.yaml`` there."""
    if not settings.registry.exists():
        shutil.copyfile(REPO_ROOT / "deploy" / "devices.yaml", settings.registry)
        settings.registry.chmod(0o644)


def ensure_grafana_password(settings: Settings) -> None:
    path = settings.data_dir / "secrets" / "grafana-admin-password"
    if not path.exists():
        write_atomic(path, secrets.token_urlsafe(24))


def hand_out(settings: Settings, root: Path = HANDOUT_ROOT) -> None:
    """Copy each service its files (replaced atomically, so a running service reading
    its registry sees the old file or the new one)."""
    for service, h in HANDOUT.items():
        dest = root / service
        for src, dst in h.files.items():
            text = (settings.data_dir / src).read_text(encoding="utf-8")
            target = dest / dst
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                write_atomic(target, text, mode=0o644 if src in PUBLIC else 0o600)
        chown_tree(dest, h.uid, h.gid)
        dest.chmod(0o700)


def run(settings: Settings) -> None:
    data = settings.data_dir
    (data / "secrets").mkdir(parents=True, exist_ok=True, mode=0o700)
    seed_registry(settings)
    # The broker's folder first belongs to its account: every file written there after
    # (ops.broker.hand_to_broker) follows.
    out = broker.broker_dir(data)
    out.mkdir(parents=True, exist_ok=True)
    chown_tree(out, MOSQUITTO_UID, MOSQUITTO_UID)
    broker.prepare(
        data,
        broker_listeners(settings),
        user=BROKER_USER,
        hosts=broker_hosts(settings, os.environ.get("CIVIC_MQTT_TLS_HOSTS", "")),
    )
    broker.sync(load_registry(settings.registry), data)
    asyncio.run(ensure_topics(settings.kafka.bootstrap, Topology.of(settings)))
    influx_setup(settings)
    ensure_mark_key(data)
    ensure_grafana_password(settings)
    hand_out(settings)
    logger.info(
        "setup done: tokens %s; broker files in %s",
        ", ".join(p.name for p in sorted((data / "secrets").glob("influx-token-*"))),
        out,
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    settings = get_settings()
    if argv:  # a civic-iot command first (devices add, tokens create...), then the setup
        done = subprocess.run(["civic-iot", *argv], check=False)  # noqa: S603, S607
        if done.returncode != 0:
            return done.returncode
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
