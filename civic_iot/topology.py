"""Every Kafka topic, consumer group and MQTT topic of one deployment, in one place.

A deployment is named by its prefix (``CIVIC_KAFKA__TOPIC_PREFIX``, empty in production).
The prefix is applied to every name here, so a test or demo run shares no topic, consumer
group, MQTT share group or retained MQTT alert with another run on the same brokers.
Topic creation (:mod:`civic_iot.kafka_admin`), the Faust app, the alert service, ingest,
the benchmarks and the tests all take their names from :class:`Topology`.

========================== ============ ============ ==========================================
Kafka topic                partitions   key          what
========================== ============ ============ ==========================================
``readings.{kind}``        N            device id    validated readings (air, water, seismic)
``readings.deadletter``    N            device id    refused device input, raw bytes + reason
``processors.township``    N            township     a device's level per hazard (processors)
``processors.shaking``     N            device id    strong-shaking notice per water device
``seismic.triggers``       1            ``network``  station triggers for the associator
``storage.deadletter``     N            measurement  points InfluxDB refused, with its reason
``alerts.candidates``      N            hazard:area  detector findings
``alerts``                 N            alert id     issued alert messages (kept forever)
``alerts.state``           1            hazard:area  alert lifecycle state (compacted)
``alerts.leader``          1            (none)       leader election of the alert service
``alerts.deadletter``      N            message id   deliveries that failed for good
``alerts.subscriptions``   1            sub. id      webhook subscriptions (compacted)
========================== ============ ============ ==========================================

``N`` is ``CIVIC_KAFKA__PARTITIONS``. ``readings.water`` and ``processors.shaking`` must
have the same partitions (the water agent reads the shaking table of its own partition);
the worker refuses to start otherwise. Faust adds one changelog topic per table
(:meth:`Topology.changelog`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from civic_iot.settings import Settings

READING_KINDS = ("air", "water", "seismic")
ReadingKind = Literal["air", "water", "seismic"]

WEEK_MS = 7 * 86_400_000
#: The largest state record a table's changelog takes, bytes (the worker's producer sends
#: up to this much): the associator's one record holds what it knows of every station,
#: about 1.1 MB at Taiwan's 615 (bench/taiwan.py), above Kafka's default of 1 MB.
STATE_RECORD_MAX_BYTES = 8 * 1024 * 1024
#: The largest record batch the worker's producer builds, bytes (aiokafka's default: 16
#: KiB); a changelog record this large or larger goes in a request of its own.
PRODUCER_BATCH_BYTES = 1024 * 1024

#: The processors' state tables (Faust keeps each in a ``{app}-{table}-changelog`` topic).
TABLES = (
    "air-state",
    "water-state",
    "seismic-state",
    "township-state",
    "quake-state",
    "shaking-state",
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is made: partitions, cleanup policy, retention (ms; -1 = forever,
    ``None`` = the broker's default) and what its records are keyed by."""

    name: str
    partitions: int
    key: str
    cleanup: Literal["delete", "compact"] = "delete"
    retention_ms: int | None = WEEK_MS
    #: The largest record, bytes (None: the broker's default, 1 MB).
    max_message_bytes: int | None = None

    def configs(self) -> dict[str, str]:
        out: dict[str, str] = {"cleanup.policy": self.cleanup}
        if self.retention_ms is not None and self.cleanup == "delete":
            out["retention.ms"] = str(self.retention_ms)
        if self.max_message_bytes is not None:
            out["max.message.bytes"] = str(self.max_message_bytes)
        return out


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of one deployment; ``prefix`` separates tests and demos."""

    prefix: str = ""
    partitions: int = 4
    #: Base names of the groups (settings); the prefix is applied here.
    alerts_group_base: str = "civic-alerts"
    share_group_base: str = "ingest"

    @classmethod
    def of(cls, settings: Settings) -> Topology:
        return cls(
            prefix=settings.kafka.topic_prefix,
            partitions=settings.kafka.partitions,
            alerts_group_base=settings.alerts.consumer_group,
            share_group_base=settings.mqtt.share_group,
        )

    def with_prefix(self, prefix: str) -> Topology:
        """The same deployment's names under another prefix (a test or demo run)."""
        return replace(self, prefix=prefix)

    # ------------------------------------------------------------------ Kafka topics

    def readings(self, kind: str) -> str:
        """Validated readings of one kind (``air``, ``water``, ``seismic``), keyed by device."""
        return f"{self.prefix}readings.{kind}"

    @property
    def deadletter(self) -> str:
        """Refused device input: raw bytes (base64), MQTT topic, reason, time."""
        return f"{self.prefix}readings.deadletter"

    @property
    def township(self) -> str:
        """Each air and water reading's per-device level, keyed by township."""
        return f"{self.prefix}processors.township"

    @property
    def shaking(self) -> str:
        """Strong-shaking notices, keyed by water device (co-partitioned with
        ``readings.water``)."""
        return f"{self.prefix}processors.shaking"

    @property
    def triggers(self) -> str:
        """Seismic ticks for the earthquake associator: one partition, one key."""
        return f"{self.prefix}seismic.triggers"

    @property
    def storage_deadletter(self) -> str:
        """Points InfluxDB refused (line protocol and InfluxDB's reason)."""
        return f"{self.prefix}storage.deadletter"

    @property
    def candidates(self) -> str:
        """Detector findings, keyed by hazard and area."""
        return f"{self.prefix}alerts.candidates"

    @property
    def alerts(self) -> str:
        """Issued alert messages (new, update, cancel), keyed by alert id."""
        return f"{self.prefix}alerts"

    @property
    def alert_state(self) -> str:
        """Compacted lifecycle state of the alert service, keyed by hazard and area."""
        return f"{self.prefix}alerts.state"

    @property
    def alert_leader(self) -> str:
        """Leader election of the alert service: one partition, no records; the instance
        its consumer group (:attr:`election_group`) assigns the partition is the active one."""
        return f"{self.prefix}alerts.leader"

    @property
    def alert_subscriptions(self) -> str:
        """Webhook subscriptions of the alert service (compacted), keyed by subscription id;
        every instance reads all of it."""
        return f"{self.prefix}alerts.subscriptions"

    @property
    def alert_deadletter(self) -> str:
        """Webhook and MQTT deliveries that failed for good, keyed by message identifier."""
        return f"{self.prefix}alerts.deadletter"

    def specs(self) -> list[TopicSpec]:
        """Every topic the processes exchange, as :func:`civic_iot.kafka_admin.ensure_topics`
        creates it."""
        n = self.partitions
        return [
            *(TopicSpec(self.readings(k), n, "device id") for k in READING_KINDS),
            TopicSpec(self.deadletter, n, "device id", retention_ms=4 * WEEK_MS),
            TopicSpec(self.township, n, "township code"),
            TopicSpec(self.shaking, n, "water device id"),
            TopicSpec(self.triggers, 1, "network"),
            TopicSpec(self.storage_deadletter, n, "measurement", retention_ms=4 * WEEK_MS),
            TopicSpec(self.candidates, n, "hazard:area"),
            # Issued messages are the record of "who was told what": keep them.
            TopicSpec(self.alerts, n, "alert id", retention_ms=-1),
            # Lifecycle state: the latest value per key survives restarts.
            TopicSpec(self.alert_state, 1, "hazard:area", cleanup="compact"),
            # Leader election of the alert service: exactly one partition, never a record.
            TopicSpec(self.alert_leader, 1, "none"),
            TopicSpec(self.alert_deadletter, n, "message id", retention_ms=-1),
            # Webhook subscriptions: the latest record per id, a tombstone deletes.
            TopicSpec(self.alert_subscriptions, 1, "subscription id", cleanup="compact"),
        ]

    def copartitioned(self) -> tuple[str, ...]:
        """Topics that must have :attr:`partitions` partitions for the processors to be
        right (see the module docstring)."""
        return (self.readings("water"), self.shaking)

    def changelog(self, table: str) -> str:
        """Faust's changelog topic of a processors table."""
        return f"{self.processors_app}-{table}-changelog"

    @staticmethod
    def changelog_spec(name: str, partitions: int) -> TopicSpec:
        """How a table's changelog is made (by the worker, before Faust starts: made by
        Faust at its start, on a fresh prefix, the first table write can fail with
        PartitionsMismatch, the consumer's metadata predating the topic)."""
        return TopicSpec(
            name, partitions, "table key", cleanup="compact",
            max_message_bytes=STATE_RECORD_MAX_BYTES,
        )  # fmt: skip

    # ------------------------------------------------------------------ consumer groups

    @property
    def processors_app(self) -> str:
        """The Faust app id, which is also the processors' consumer group (workers of the
        roles ``all`` and ``bulk``)."""
        return f"{self.prefix}civic-processors"

    @property
    def processors_seismic(self) -> str:
        """The app id and consumer group of the ``seismic`` workers: a group of their own,
        so that their partitions and event loop never wait for the bulk readings'."""
        return f"{self.processors_app}-seismic"

    @property
    def processors_quake(self) -> str:
        """The app id and consumer group of the ``quake`` workers (the associator alone,
        when the seismic path runs as ``stations`` + ``quake``)."""
        return f"{self.processors_app}-quake"

    def agent(self, name: str) -> str:
        """A Faust agent's name (unique per app and deployment)."""
        return f"{self.prefix}{name}"

    @property
    def alerts_group(self) -> str:
        """The alert service's consumer group of ``alerts.candidates``."""
        return f"{self.prefix}{self.alerts_group_base}"

    @property
    def webhook_group(self) -> str:
        """The alert service's webhook consumer group of ``alerts`` (every instance joins;
        offsets are committed once a record is delivered or dead-lettered)."""
        return f"{self.prefix}{self.alerts_group_base}-webhooks"

    @property
    def election_group(self) -> str:
        """The alert service's election group (named like its topic)."""
        return self.alert_leader

    @property
    def groups(self) -> tuple[str, ...]:
        return (
            self.processors_app,
            self.processors_seismic,
            self.processors_quake,
            self.alerts_group,
            self.election_group,
            self.webhook_group,
        )

    # ------------------------------------------------------------------ MQTT

    @property
    def _run(self) -> str:
        """The prefix as one MQTT topic level and share-group name (no ``/ + #``)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.prefix).strip("-")

    @property
    def share_group(self) -> str:
        """The MQTT 5 shared-subscription group of the ingest processes."""
        return f"{self.share_group_base}-{self._run}" if self._run else self.share_group_base

    @property
    def device_subscription(self) -> str:
        """What ingest subscribes to: every device topic, shared among its processes."""
        return f"$share/{self.share_group}/devices/#"

    @property
    def mqtt_alerts_root(self) -> str:
        """Root of the retained MQTT alert topics ``{root}/{hazard}/{area}``: ``alerts`` in
        production, ``runs/{prefix}/alerts`` for a prefixed run (the broker ACL allows both
        to the alert service and to agencies)."""
        return f"runs/{self._run}/alerts" if self._run else "alerts"


__all__ = ["READING_KINDS", "TABLES", "WEEK_MS", "ReadingKind", "TopicSpec", "Topology"]
