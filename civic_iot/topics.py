"""Kafka topic names, in one place (see README "Kafka topics")."""

from __future__ import annotations

from dataclasses import dataclass

from civic_iot.settings import KafkaSettings

READING_KINDS = ("air", "water", "seismic")


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names for one deployment; ``prefix`` separates tests and demos."""

    prefix: str = ""

    def readings(self, kind: str) -> str:
        """Validated readings of one kind (``air``, ``water``, ``seismic``), keyed by device."""
        return f"{self.prefix}readings.{kind}"

    @property
    def deadletter(self) -> str:
        """Refused input: raw bytes (base64), MQTT topic, reason, time."""
        return f"{self.prefix}readings.deadletter"

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
        its consumer group (named like the topic) assigns the partition is the active one."""
        return f"{self.prefix}alerts.leader"

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> Topics:
        return cls(prefix=kafka.topic_prefix)
