"""The MQTT service accounts and what each may do on the broker.

A device's user is its id; it may publish under ``devices/{its id}/#`` and read nothing.
Service users: ``civic-ingest`` reads ``devices/#`` (and ``$SYS``), ``civic-alerts``
publishes the alert topics, ``civic-subscriber`` only reads them (agencies). The alert
topics are ``alerts/#`` in production and ``runs/{run}/alerts/#`` for a prefixed run
(:attr:`civic_iot.topology.Topology.mqtt_alerts_root`). ``ops.broker`` writes
Mosquitto's password and ACL files from these and the device registry.
"""

from __future__ import annotations

INGEST_USER = "civic-ingest"
ALERTS_USER = "civic-alerts"
SUBSCRIBER_USER = "civic-subscriber"

SERVICE_ACL: dict[str, tuple[str, ...]] = {
    INGEST_USER: ("topic read devices/#", "topic read $SYS/#"),
    ALERTS_USER: ("topic readwrite alerts/#", "topic readwrite runs/+/alerts/#"),
    SUBSCRIBER_USER: ("topic read alerts/#", "topic read runs/+/alerts/#"),
}


def is_service_account(name: str) -> bool:
    """Whether a name belongs to a service account (no device may take one)."""
    return name in SERVICE_ACL
