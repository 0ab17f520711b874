"""The alert service: candidates from Kafka in, alert messages out to every channel.

A thin asyncio shell around the pure lifecycle (:mod:`alerts.lifecycle`). Several
instances may run at once (a standby, a rolling deploy, a restart that overlaps the old
process): exactly one is **active**, the others are **standby** and take over by themselves.

Who is active (:mod:`alerts.election`)
    Every instance joins the consumer group of the one-partition topic ``alerts.leader``;
    the member assigned the partition is active. A clean stop leaves the group and a
    standby is elected within about one heartbeat (``AlertSettings.heartbeat_interval_s``,
    3 s); an instance that dies or freezes is removed after the session timeout
    (``AlertSettings.session_timeout_s``, 10 s). Candidates wait in Kafka meanwhile. Any
    member joining or leaving makes the active instance step down and take over again
    (the eager rebalance protocol of aiokafka revokes every partition before it reassigns
    any); the assignor gives the partition back to it, so that costs a state replay and a
    rejoin of the candidate group, not a handover.

Taking over (the election partition assigned)
    1. The lifecycle state is rebuilt by reading the compacted ``alerts.state`` topic from
       the beginning to its end offsets of that moment. The previous leader had stepped
       down, or had been removed from the group, before this instance was assigned the
       partition, so its last write is in what is read: an open alert is not issued again
       and a pending Cancel is not lost.
    2. Only then does the instance join the candidate consumer group
       (:attr:`~civic_iot.topology.Topology.alerts_group`), start the tick timer and accept
       acknowledgements.

Each step (a candidate through :func:`~alerts.lifecycle.on_candidate`, a tick of
:func:`~alerts.lifecycle.on_tick` every ``tick_interval_s``, an operator's
:func:`~alerts.lifecycle.acknowledge`), under one lock and in this order:
    1. the lifecycle function runs; if it changed nothing, the step ends here;
    2. the fence is checked (below);
    3. the issued messages are produced to the ``alerts`` topic (key alert id; the JSON form
       and the CAP XML) and acknowledged by Kafka;
    4. the changed records are written to ``alerts.state`` (key ``hazard:area``, a tombstone
       for a pruned key);
    5. only then is the in-memory state replaced and, for candidates, the offset committed
       (after the batch, or after the last candidate handled when stepping down).
    A crash in between repeats the step on the next leader: the same message identifiers
    come out again (the lifecycle derives them from the input), so receivers drop the
    repeat by ``X-Civic-Message-Id``; nothing is lost. Each issued message is then written
    as an ``alert`` point and handed to the delivery channels (:mod:`alerts.delivery`);
    their results become ``delivery`` points, metrics, and for failures a dead-letter
    record on ``alerts.deadletter``. Points are written by a background flush through the
    one InfluxDB sink (:mod:`civic_iot.storage.sink`): while InfluxDB is unavailable they
    wait in it (bounded; beyond the bound, and at a stop, they go to
    ``storage.deadletter``), and a point InfluxDB refuses goes there at once.

Stepping down (the partition revoked, or :meth:`AlertService.stop`)
    No new step starts; the step in flight finishes (or is abandoned after half the
    session timeout, and what it had handed to the producer is flushed); the handled
    candidates' offsets are committed and the candidate consumer leaves its group; the
    in-memory state is dropped. Only then does the revocation callback return; the group
    reassigns the partition only after that (or after removing this member when the
    rebalance timeout, the session timeout, runs out). Messages issued before keep being
    delivered by the channels.

Fencing: what is and is not guaranteed
    A consumer group does not fence a member: one that froze (a long GC or swap pause,
    SIGSTOP, a suspended VM, a network cut) still believes it is active when it resumes,
    although the group removed it after the session timeout and elected another. So each
    step that would write first asks the broker whether this member still owns the
    election partition in the group's current generation (an offset commit on the
    election group, :meth:`~alerts.election.LeaderElection.fence`, about 1 ms); the group
    coordinator refuses a removed member or an old generation, and the step is abandoned
    without writing anything (as it is when the broker does not answer within a quarter
    of the session timeout). An instance that resumes from a pause anywhere before that
    check therefore issues nothing: no duplicate Alert, no Cancel from its stale timers;
    it steps down and rejoins as a standby. Its candidate offset commits are refused by
    the candidate group in the same way, so the new leader reads those candidates again.

    Not covered: the check and the writes are not atomic. A pause that begins after a
    successful check and before the writes reach the broker, and outlasts the session
    timeout, lets that one step's writes arrive after the new leader rebuilt its state:
    its messages go out besides the new leader's (with the same identifiers when both
    handled the same input), and its ``alerts.state`` record for that key can overwrite
    the new leader's until the new leader next writes that key (a further takeover before
    that would read the stale record). The same holds for the records of a step abandoned
    at the end of the step-down grace period, if the flush does not finish either.
    Closing that window needs Kafka transactions (a ``transactional.id`` whose epoch fences
    the old producer): about 30 ms per step on the development broker against 2 ms, so
    not done. Deliveries (MQTT, webhooks) of messages issued before a step-down are not
    fenced: they were issued once, by the leader of the time, and are not issued again.

Webhooks are not delivered by the step: every instance runs a consumer of the ``alerts``
topic of its own (:mod:`alerts.webhooks`) that commits a record only once each matching
subscription got it (2xx) or it was dead-lettered, so a crash loses no webhook. The
subscriptions themselves live in the compacted topic ``alerts.subscriptions``
(:mod:`alerts.subscription_store`), read by every instance.

Sizes: a candidate is clamped when it is taken (:func:`alerts.limits.clamp_candidate`), the
lifecycle caps references and acknowledgements, and the service checks at start that the
largest message and state record its configuration allows fit Kafka's and Mosquitto's
limits (:func:`check_record_sizes`). A record that would still exceed (a broker set
smaller than the defaults) is not written: logged, counted
(``civic_alerts_records_refused_total``); the service goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr, ValidationError

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus, to_cap_xml
from alerts.delivery import (
    DeliveryResult,
    MqttChannel,
    Sink,
    ack_point,
    alert_point,
    delivery_point,
)
from alerts.election import (
    ROLES,
    LeaderElection,
    LostLeadershipError,
    NotActiveError,
    Role,
)
from alerts.lifecycle import (
    STATE_VERSION,
    AckRecord,
    AlertMessage,
    AlertRecord,
    LifecycleConfig,
    LifecycleState,
    Reference,
    acknowledge,
    changed_keys,
    on_candidate,
    on_tick,
)
from alerts.limits import (
    KAFKA_RECORD_BUDGET,
    MQTT_PAYLOAD_BUDGET,
    CandidateRefusedError,
    clamp_candidate,
    worst_case_candidate,
)
from alerts.messages import (
    to_json_bytes,
    to_json_dict,
    township_json_bytes,
    township_warnings,
)
from alerts.subscription_store import SubscriptionStore, webhook_key
from alerts.text import get_logger
from alerts.urls import UrlPolicy
from alerts.webhooks import WebhookDelivery, deadletter_value
from civic_iot.auth import TokenStore
from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.health import KAFKA_ASK_INTERVAL_S, KafkaWatch
from civic_iot.kafka_admin import ensure_topics, wait_for_topics
from civic_iot.logs import limit_repeats
from civic_iot.registry import load_registry
from civic_iot.settings import Settings, mqtt_endpoint, mqtt_password
from civic_iot.storage.sink import (
    AIOKafkaPublisher,
    InfluxSink,
    StorageMetrics,
    StorageUnavailable,
    deadletter_report,
)
from civic_iot.times import to_ns
from civic_iot.topology import Topology

logger = get_logger(__name__)

__all__ = [
    "STATE_VERSION_HEADER",
    "AlertMetrics",
    "AlertService",
    "RecordTooLargeError",
    "alerts_topic_record",
    "check_record_sizes",
    "deadletter_record",
    "lifecycle_config",
    "replay_state",
    "state_updates",
    "worst_case_sizes",
]

#: Kafka header on every ``alerts.state`` record: the lifecycle's state version.
STATE_VERSION_HEADER = "civic-state-version"

Step = Callable[[LifecycleState, datetime], tuple[LifecycleState, list[AlertMessage]]]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- pure helpers


def lifecycle_config(settings: Settings) -> LifecycleConfig:
    """The lifecycle configuration of a deployment (sender from ``CIVIC_ALERTS__SENDER``)."""
    return LifecycleConfig(sender=settings.alerts.sender)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def township_centroids(settings: Settings) -> dict[str, tuple[float, float]]:
    """Township code -> centroid (lat, lon degrees) from the registry, for the earthquake
    countdown per township; without a readable registry, townships are placed by their
    reported cells only (logged)."""
    try:
        registry = load_registry(settings.registry)
    except (OSError, ValueError) as exc:
        logger.warning("registry unreadable path=%s error=%s", settings.registry, exc)
        return {}
    return {t.code: (t.lat, t.lon) for t in registry.townships}


def alerts_topic_record(
    msg: AlertMessage, status: CapStatus, *, cap_config: CapConfig = DEFAULT_CAP_CONFIG
) -> tuple[bytes, bytes]:
    """Key and value of ``msg`` on the ``alerts`` topic: the JSON form and the CAP XML."""
    value = {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "key": msg.key,
        "msg_type": msg.msg_type,
        "status": status,
        # Exact times for the webhook consumer's latency figures (the JSON form has
        # CAP times, whole seconds).
        "sent_ns": to_ns(msg.sent),
        "detected_at_ns": to_ns(msg.detected_at),
        "json": to_json_dict(msg, status, config=cap_config),
        "cap_xml": to_cap_xml(msg, status, config=cap_config).decode(),
    }
    return msg.alert_id.encode(), _dumps(value)


def state_updates(
    before: LifecycleState, after: LifecycleState
) -> list[tuple[bytes, bytes | None]]:
    """The ``alerts.state`` records that turn ``before`` into ``after``, by key.

    A key missing from ``after`` gets a tombstone (value ``None``), so compaction forgets it.
    """
    out: list[tuple[bytes, bytes | None]] = []
    for key in sorted(changed_keys(before, after)):
        rec = after.records.get(key)
        out.append((key.encode(), None if rec is None else rec.model_dump_json().encode()))
    return out


def replay_state(
    records: Iterable[tuple[bytes | None, bytes | None, int | None]],
) -> LifecycleState:
    """The state from ``alerts.state`` records ``(key, value, version)``, oldest first.

    The last value per key wins; a tombstone removes the key. A record written by another
    state version is refused (a silent misread could re-send or lose alerts).
    """
    latest: dict[str, dict[str, Any]] = {}
    for key, value, version in records:
        if key is None:
            continue
        k = key.decode()
        if value is None:
            latest.pop(k, None)
            continue
        if version is not None and version != STATE_VERSION:
            msg = f"alerts.state record {k!r} has state version {version}; expected {STATE_VERSION}"
            raise ValueError(msg)
        latest[k] = json.loads(value)
    return LifecycleState.from_records(latest)


def deadletter_record(result: DeliveryResult) -> tuple[bytes, bytes]:
    """Key and value of a failed delivery on ``alerts.deadletter`` (no secrets, no body)."""
    return deadletter_value(result)


class RecordTooLargeError(ValueError):
    """A record beyond the size its topic or broker takes (see :mod:`alerts.limits`)."""


def _worst_message(
    lifecycle: LifecycleConfig, fill: str, at: datetime
) -> tuple[AlertMessage, AlertRecord]:
    caps = lifecycle.caps
    cand = clamp_candidate(worst_case_candidate(fill, at, caps), caps)
    # A size check, not an alert: the lifecycle's "alert message" line stays out of the log.
    quiet = get_logger(on_candidate.__module__)
    silence = logging.Filter("-")  # passes only a logger named "-": none here
    quiet.addFilter(silence)
    try:
        _, [alert] = on_candidate(LifecycleState(), cand, at, config=lifecycle)
    finally:
        quiet.removeFilter(silence)
    refs = tuple(
        Reference(sender=lifecycle.sender, identifier=str(uuid.UUID(int=i)), sent=at)
        for i in range(caps.references)
    )
    acks = tuple(
        AckRecord(
            alert_id=alert.alert_id,
            key=alert.key,
            by=(fill * caps.ack_by)[: caps.ack_by],
            at=at,
            note=(fill * caps.ack_note)[: caps.ack_note],
        )
        for _ in range(caps.acks)
    )
    msg = alert.model_copy(
        update={
            "msg_type": "Update",
            "reason": "escalated",
            "references": refs,
            "acknowledgements": acks,
            "sequence": 99_999,
        }
    )
    record = AlertRecord(
        key=cand.key,
        alert_id=alert.alert_id,
        sequence=99_999,
        announced=cand,
        latest=cand,
        peak_severity="Extreme",
        references=refs,
        last_seen=at,
        below_since=at,
        zero_since=at,
        acks=acks,
        closed_at=at,
    )
    return msg, record


def worst_case_sizes(
    lifecycle: LifecycleConfig, cap_config: CapConfig, status: CapStatus, fill: str
) -> dict[str, int]:
    """Bytes of the largest record of each kind the caps allow, texts made of ``fill``:
    ``alerts`` (key + value), ``alerts.state`` (key + value + header), ``mqtt`` (payload),
    ``mqtt_township`` (the largest payload of an earthquake's township topics)."""
    at = datetime(2025, 1, 1, tzinfo=UTC)
    msg, record = _worst_message(lifecycle, fill, at)
    key, value = alerts_topic_record(msg, status, cap_config=cap_config)
    [(state_key, state_value)] = state_updates(
        LifecycleState(), LifecycleState(records={record.key: record})
    )
    return {
        "alerts": len(key) + len(value),
        "alerts.state": len(state_key) + len(state_value or b"") + 64,
        "mqtt": len(to_json_bytes(msg, status, config=cap_config)),
        "mqtt_township": _worst_township_payload(msg, status, cap_config),
    }


def _worst_township_payload(msg: AlertMessage, status: CapStatus, cap_config: CapConfig) -> int:
    """Bytes of the largest township payload of ``msg`` made an earthquake. Its size does
    not depend on the number of cells or townships (a few of the longest codes do), nor on
    the evidence beyond these numbers, which take their longest form."""
    big = -1.2345678901234567e-300
    quake = msg.model_copy(
        update={
            "hazard": "earthquake",
            "cells": msg.cells[:8],
            "geocodes": msg.geocodes[:8],
            "evidence": {
                "magnitude": big,
                "epicentre_lat": big,
                "epicentre_lon": big,
                "depth_km": big,
                "origin_time": "2025-01-01T00:00:00.000+00:00",
                "max_intensity": "5-",
            },
        }
    )
    now_s = msg.sent.timestamp()
    places = township_warnings(quake, status, {}, config=cap_config)
    return max(
        (len(township_json_bytes(quake, code, w, now_s, config=cap_config)) for code, w in places),
        default=0,
    )


#: Characters that cost the most bytes in one of the encodings: ``&`` (5 in XML), an
#: astral character (4 in UTF-8), ``"`` (2 in JSON, 12 as XML in JSON), a CJK character
#: (3), a newline (2 in JSON).
WORST_FILLS = ("&", "\U0001f6a8", '"', "\u6c34", "\n", "<")

_BUDGETS = {
    "alerts": KAFKA_RECORD_BUDGET,
    "alerts.state": KAFKA_RECORD_BUDGET,
    "mqtt": MQTT_PAYLOAD_BUDGET,
    "mqtt_township": MQTT_PAYLOAD_BUDGET,
}


def check_record_sizes(
    lifecycle: LifecycleConfig, cap_config: CapConfig, status: CapStatus
) -> dict[str, int]:
    """The largest size of each record over :data:`WORST_FILLS`; ValueError beyond a budget."""
    worst: dict[str, int] = dict.fromkeys(_BUDGETS, 0)
    for fill in WORST_FILLS:
        for name, size in worst_case_sizes(lifecycle, cap_config, status, fill).items():
            worst[name] = max(worst[name], size)
    over = {name: size for name, size in worst.items() if size > _BUDGETS[name]}
    if over:
        msg = "the configured caps let records exceed their size limits: " + ", ".join(
            f"{n} {b} bytes > {_BUDGETS[n]}" for n, b in over.items()
        )
        raise ValueError(msg)
    return worst


# --------------------------------------------------------------------------- metrics


class AlertMetrics:
    """Prometheus metrics of one service instance (its own registry, for ``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.alerts = Gauge(
            "civic_alerts_alerts",
            "Alerts held by the lifecycle, by state (open, closed and kept for replays); "
            "0 on a standby, which holds no state",
            ["state"],
            registry=self.registry,
        )
        self.role = Gauge(
            "civic_alerts_role",
            "1 for this instance's role (joining, standby, taking_over, active), 0 for others",
            ["role"],
            registry=self.registry,
        )
        self.takeovers = Counter(
            "civic_alerts_takeovers",
            "Times this instance became the active one (state rebuilt from alerts.state)",
            registry=self.registry,
        )
        self.messages = Counter(
            "civic_alerts_messages",
            "Alert messages issued, by CAP msgType",
            ["msg_type"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "civic_alerts_deliveries",
            "Delivery attempts by channel and outcome (delivered, retry, failed)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.candidates = Counter(
            "civic_alerts_candidates",
            "Alert candidates consumed, by result (ok, invalid)",
            ["result"],
            registry=self.registry,
        )
        self.refused_records = Counter(
            "civic_alerts_records_refused",
            "Records not written because they exceed the size their topic or broker takes",
            ["topic"],
            registry=self.registry,
        )
        self.clamped = Counter(
            "civic_alerts_candidates_clamped",
            "Candidates cut down to the size caps (texts, devices, cells...) when taken",
            registry=self.registry,
        )
        self.latency = Histogram(
            "civic_alerts_latency_seconds",
            "Detector decision (candidate detected_at) -> published, seconds, by channel "
            "(kafka = alerts topic acknowledged, mqtt = PUBACK, webhook = 2xx answer)",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.observe_role("joining")

    def observe_state(self, state: LifecycleState) -> None:
        n_open = sum(1 for r in state.records.values() if r.status == "open")
        self.alerts.labels("open").set(n_open)
        self.alerts.labels("closed").set(len(state.records) - n_open)

    def observe_role(self, role: Role) -> None:
        for r in ROLES:
            self.role.labels(r).set(1 if r == role else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- service


@dataclass(eq=False)
class _Term:
    """One period of leadership of this instance, from the assignment to the step-down."""

    number: int
    #: Set when the term must end: no new step starts once it is set.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Takes over, then runs the candidate consumer and the timer (:meth:`_run_term`).
    task: asyncio.Task[None] | None = None
    consumer: AIOKafkaConsumer | None = None
    #: The state is rebuilt and steps may run.
    active: bool = False
    #: The step-down is complete.
    down: bool = False


class AlertService:
    """Candidates in, alert messages out; see the module doc for roles and the order of writes.

    Everything comes from one :class:`~civic_iot.settings.Settings`; ``lifecycle`` and
    ``cap_config`` override what would be derived from it (tests use short hold times).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: LifecycleConfig | None = None,
        cap_config: CapConfig = DEFAULT_CAP_CONFIG,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.topics = Topology.of(settings)
        self.lifecycle = lifecycle or lifecycle_config(settings)
        self.cap_config = cap_config
        self.status: CapStatus = settings.alerts.cap_status
        #: Refuses to start with caps that would let a record exceed its limit.
        self.worst_sizes = check_record_sizes(self.lifecycle, cap_config, self.status)
        self.metrics = AlertMetrics()
        #: Names this process in logs and ``/health`` (host, pid, a random suffix).
        self.instance = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._clock = clock
        a = settings.alerts
        #: API tokens (civic_iot.auth), re-read when the file changes.
        self.tokens = TokenStore.at(settings.tokens_file)
        self.url_policy = UrlPolicy.of(a.webhook_allow_http, a.webhook_allowed_networks)
        self.max_subscriptions_per_owner = a.max_subscriptions_per_owner
        self.secret_grace_s = a.webhook_secret_grace_s
        #: A step-down waits up to half the session timeout for the step in flight, then
        #: up to an eighth each for the candidates' offset commit, the producer flush and
        #: the candidate consumer's leaving: within the rebalance timeout (the session
        #: timeout) the group waits for it.
        self._grace_s = a.session_timeout_s / 2
        self._close_s = a.session_timeout_s / 8
        self._state = LifecycleState()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._role: Role = "joining"
        self._settled = asyncio.Event()
        self._elected = asyncio.Event()
        self._term: _Term | None = None
        self._terms = 0
        self._step_down_lock = asyncio.Lock()
        self._election: LeaderElection | None = None
        self._producer_: AIOKafkaProducer | None = None
        #: Whether Kafka answers, for ``/health``.
        self._kafka = KafkaWatch(f"alerts instance={self.instance}")
        #: The ``alerts`` bucket's points (module doc of :mod:`civic_iot.storage.sink`):
        #: alerts go out while InfluxDB is down, so the sink is bounded; points past the
        #: bound, and those still held when the service stops, go to storage.deadletter.
        self.points = InfluxSink.from_settings(
            settings,
            "alerts",
            service="alerts",
            deadletters=AIOKafkaPublisher(lambda: self._producer),
            bounded=True,
            metrics=StorageMetrics.of(self.metrics.registry),
        )
        self._buckets = settings.influx
        password = settings.mqtt.alerts_password or SecretStr(
            mqtt_password(settings, settings.mqtt.alerts_username)
        )
        broker = mqtt_endpoint(settings)
        self.mqtt = MqttChannel(
            host=broker.host,
            port=broker.port,
            tls_ca=broker.tls_ca,
            username=settings.mqtt.alerts_username,
            password=password,
            status=self.status,
            report=self._record_delivery,
            cap_config=cap_config,
            publish_timeout_s=a.mqtt_publish_timeout_s,
            max_attempts=a.webhook_max_attempts,
            keepalive_s=settings.mqtt.keepalive_s,
            root=self.topics.mqtt_alerts_root,
            townships=township_centroids(settings),
        )
        self.subscriptions = SubscriptionStore(
            bootstrap=settings.kafka.bootstrap,
            topic=self.topics.alert_subscriptions,
            key=webhook_key(settings),
            send=self._send_subscription,
        )
        self.webhooks = WebhookDelivery(
            bootstrap=settings.kafka.bootstrap,
            topic=self.topics.alerts,
            group=self.topics.webhook_group,
            deadletter_topic=self.topics.alert_deadletter,
            store=self.subscriptions,
            policy=self.url_policy,
            report=self._record_delivery,
            deadletter=self._send_deadletter,
            max_attempts=a.webhook_max_attempts,
            timeout_s=a.webhook_timeout_s,
            backoff_base_s=a.webhook_backoff_base_s,
            backoff_cap_s=a.webhook_backoff_cap_s,
            max_pending=a.webhook_max_pending,
            session_timeout_s=a.session_timeout_s,
            heartbeat_interval_s=a.heartbeat_interval_s,
            fetch_wait_s=settings.kafka.warning_fetch_wait_s,
        )
        self._channels: list[Sink[AlertMessage]] = [self.mqtt]

    # ------------------------------------------------------------------ views

    @property
    def role(self) -> Role:
        """``joining``, ``standby``, ``taking_over`` or ``active``."""
        return self._role

    @property
    def ready(self) -> bool:
        """Started and settled: active (state loaded, consuming) or standby."""
        return self._role in ("standby", "active")

    @property
    def state(self) -> LifecycleState:
        """The lifecycle state; empty unless active (a standby holds none)."""
        return self._state

    def open_alerts(self) -> list[AlertRecord]:
        return self._state.open_alerts()

    def now(self) -> datetime:
        """The service's clock (aware, UTC)."""
        return self._clock()

    def health(self) -> dict[str, Any]:
        serving = self._role in ("standby", "taking_over", "active")
        failing = self.points.failing_since
        reasons = []
        if not serving:
            reasons.append(f"role {self._role}")
        if not self.mqtt.connected:
            reasons.append("mqtt disconnected")
        if kafka := self._kafka.reason():
            reasons.append(kafka)
        return {
            "status": "degraded" if reasons else "ok",
            "reason": "; ".join(reasons),
            "kafka": "unavailable" if kafka else "ok",
            "ready": self.ready,
            "role": self._role,
            "instance": self.instance,
            "election_group": self.topics.alert_leader,
            "mqtt_connected": self.mqtt.connected,
            # A standby holds no state: it does not know what is open.
            "open_alerts": len(self._state.open_alerts()) if self._role == "active" else None,
            # Counts only: /health is open to anyone.
            "webhook_subscriptions": len(self.subscriptions.all()),
            "webhook_pending": self.webhooks.pending,
            "cap_status": self.status,
            # Reported, not judged: alerts still go out while InfluxDB is down (the points
            # wait in the sink), and a refused point is a data problem, not an outage.
            "storage": "ok" if failing is None else "unavailable",
            "storage_failing_s": {}
            if failing is None
            else {self.points.name: round(time.monotonic() - failing, 1)},
            "storage_pending": self.points.pending,
            "storage_deadletters": deadletter_report({self.points.name: self.points}),
        }

    # ------------------------------------------------------------------ start and stop

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._producer_ is None:
            msg = "AlertService used before start()"
            raise RuntimeError(msg)
        return self._producer_

    async def start(self) -> None:
        """Connect everything, join the election; return once active or standby."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self._check_topics()
        self._producer_ = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            client_id="civic-alerts",
        )
        await self._producer_.start()
        await self.subscriptions.start()
        await self.mqtt.start()
        await self.webhooks.start()
        a = self.settings.alerts
        election = LeaderElection(
            bootstrap=self.settings.kafka.bootstrap,
            topic=self.topics.alert_leader,
            client_id="civic-alerts",
            session_timeout_s=a.session_timeout_s,
            heartbeat_interval_s=a.heartbeat_interval_s,
            on_elected=self._on_elected,
            on_revoked=self._on_revoked,
        )
        self._election = election
        await election.start()
        self._tasks = [
            asyncio.create_task(election.wait(), name="alerts-election"),
            asyncio.create_task(self._lead_loop(), name="alerts-lead"),
            asyncio.create_task(self._flush_loop(), name="alerts-flush"),
            asyncio.create_task(self._watch_kafka(), name="alerts-kafka-watch"),
            asyncio.create_task(self.webhooks.wait(), name="alerts-webhooks-wait"),
        ]
        # A caller that starts one instance and then sends candidates expects them handled
        # by an instance that has its state: return once the role is settled. A group that
        # still holds a dead member makes this wait for that member's session timeout.
        settle_s = 3 * a.session_timeout_s + 30
        settled = asyncio.create_task(self._settled.wait())
        done, _ = await asyncio.wait(
            [settled, *self._tasks], timeout=settle_s, return_when=asyncio.FIRST_COMPLETED
        )
        settled.cancel()
        for t in done:
            if t is not settled:
                t.result()  # a background task failed: raise its error
                msg = f"alert service task {t.get_name()} ended during start"
                raise RuntimeError(msg)
        if not done:
            msg = (
                f"no answer from the election group {self.topics.alert_leader} on "
                f"{self.settings.kafka.bootstrap} within {settle_s:.0f} s"
            )
            raise RuntimeError(msg)
        logger.info(
            "alert service started instance=%s role=%s election=%s candidates=%s group=%s "
            "webhook_subscriptions=%d status=%s",
            self.instance,
            self._role,
            self.topics.alert_leader,
            self.topics.candidates,
            self.topics.alerts_group,
            len(self.subscriptions.all()),
            self.status,
        )

    async def wait(self) -> None:
        """Return when a background task stops; raise its error if it failed."""
        if not self._tasks:
            return
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Step down (finish the current step), leave the election, drain, close everything.

        Stepping down before leaving means a standby, elected the moment this instance
        leaves, never overlaps with it.
        """
        self._stopping.set()
        self._elected.clear()
        term = self._term
        if term is not None:
            await self._step_down(term, "service stopping")
        if self._election is not None:
            await self._election.stop()
            self._election = None
        # What it has not delivered stays uncommitted: the next owner delivers it.
        await self.webhooks.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        for ch in self._channels:
            await ch.close()
        await self.subscriptions.stop()
        await self._close_points()
        if self._producer_ is not None:
            await self._producer_.stop()
            self._producer_ = None
        logger.info("alert service stopped instance=%s", self.instance)

    # ------------------------------------------------------------------ leadership

    def _set_role(self, role: Role) -> None:
        if role != self._role:
            logger.info("alerts role instance=%s from=%s to=%s", self.instance, self._role, role)
        self._role = role
        self.metrics.observe_role(role)
        if role in ("standby", "active"):
            self._settled.set()

    def _on_elected(self, leader: bool) -> None:
        """A rebalance of the election group ended (must return at once)."""
        if self._stopping.is_set():
            return
        if leader:
            self._set_role("taking_over")
            self._elected.set()
        else:
            self._elected.clear()
            self._set_role("standby")

    async def _on_revoked(self) -> None:
        """The election partition is being taken away: return only when nothing more is written."""
        self._elected.clear()
        term = self._term
        if term is not None:
            await self._step_down(term, "leadership revoked")
        if not self._stopping.is_set():
            self._set_role("standby")

    async def _lead_loop(self) -> None:
        """While elected, run a term; after a term ends while still elected, run another."""
        # Not a retry backoff (civic_iot.retry): a term comes round again only when it was
        # fenced or stopped while still elected (any other error ends this loop), and what
        # settles that is the group's rebalance, due within a heartbeat. Waiting longer
        # each time would only delay the takeover once the group has settled.
        rebalance_s = self.settings.alerts.heartbeat_interval_s
        while not self._stopping.is_set():
            elected = asyncio.create_task(self._elected.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([elected, stopping], return_when=asyncio.FIRST_COMPLETED)
            elected.cancel()
            stopping.cancel()
            if self._stopping.is_set():
                return
            if not self._elected.is_set():
                continue  # elected and revoked again before this loop ran
            self._terms += 1
            term = _Term(self._terms)
            self._term = term
            term.task = asyncio.create_task(self._run_term(term), name=f"alerts-term-{term.number}")
            await asyncio.wait([term.task])
            await self._step_down(term, "term ended")
            error = None if term.task.cancelled() else term.task.exception()
            if error is not None and not isinstance(error, NotActiveError):
                raise error
            if self._elected.is_set() and not self._stopping.is_set():
                # Lost leadership not yet revoked, or a takeover that failed: the group
                # is about to rebalance; try again after a heartbeat if it does not.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), rebalance_s)

    async def _run_term(self, term: _Term) -> None:
        """Take over (state, then candidates), then run the consumer and the timer."""
        if self._stopping.is_set() or term.stopping.is_set():
            return
        self._set_role("taking_over")
        state = await self._load_state()
        a = self.settings.alerts
        consumer = AIOKafkaConsumer(
            self.topics.candidates,
            bootstrap_servers=self.settings.kafka.bootstrap,
            group_id=self.topics.alerts_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="civic-alerts",
            fetch_max_wait_ms=round(self.settings.kafka.warning_fetch_wait_s * 1000),
            # An active instance that dies leaves this group as soon as the election.
            session_timeout_ms=round(a.session_timeout_s * 1000),
            heartbeat_interval_ms=round(a.heartbeat_interval_s * 1000),
        )
        term.consumer = consumer
        await consumer.start()
        async with self._lock:
            if term.stopping.is_set() or self._term is not term:
                return
            self._state = state
            term.active = True
            self.metrics.observe_state(state)
            self.metrics.takeovers.inc()
            self._set_role("active")
        logger.info(
            "alert service active instance=%s term=%d open_alerts=%d candidates=%s group=%s",
            self.instance,
            term.number,
            len(state.open_alerts()),
            self.topics.candidates,
            self.topics.alerts_group,
        )
        children = [
            asyncio.create_task(self._consume(term, consumer), name="alerts-consume"),
            asyncio.create_task(self._tick_loop(term), name="alerts-tick"),
        ]
        stop = asyncio.create_task(term.stopping.wait())
        try:
            await asyncio.wait([*children, stop], return_when=asyncio.FIRST_COMPLETED)
            term.stopping.set()
            # The consumer and the timer finish the step they are in, then return.
            results = await asyncio.gather(*children, return_exceptions=True)
        finally:
            for t in (*children, stop):
                t.cancel()
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _step_down(self, term: _Term, reason: str) -> None:
        """End ``term``: no step starts, the one in flight ends, nothing is left to write."""
        async with self._step_down_lock:
            if term.down:
                return
            term.stopping.set()
            task = term.task
            if task is not None and not task.done():
                done, _ = await asyncio.wait([task], timeout=self._grace_s)
                if not done:
                    logger.warning(
                        "alerts step abandoned at step-down instance=%s term=%d after_s=%.1f",
                        self.instance,
                        term.number,
                        self._grace_s,
                    )
                    task.cancel()
                    await asyncio.wait([task])
            async with self._lock:
                was_active = term.active
                term.active = False
                if self._term is term:
                    self._term = None
                self._state = LifecycleState()
            # An abandoned step may have left records in the producer's buffer: send them
            # now, before another instance can be elected, rather than later.
            with contextlib.suppress(TimeoutError, KafkaError):
                async with asyncio.timeout(self._close_s):
                    await self._producer.flush()
            if term.consumer is not None:
                with contextlib.suppress(TimeoutError, KafkaError):
                    async with asyncio.timeout(self._close_s):
                        await term.consumer.stop()
            term.down = True
            self.metrics.observe_state(self._state)
            if was_active:
                logger.info(
                    "alert service stepped down instance=%s term=%d reason=%s",
                    self.instance,
                    term.number,
                    reason,
                )
            if not self._stopping.is_set() and self._role in ("active", "taking_over"):
                self._set_role("standby")

    async def _fence(self, term: _Term) -> None:
        """Raise unless the broker still counts this instance as the leader (module doc)."""
        if self._election is None:
            msg = "no election"
            raise LostLeadershipError(msg)
        try:
            await self._election.fence()
        except LostLeadershipError as exc:
            term.stopping.set()
            logger.warning(
                "alerts step refused: leadership lost instance=%s term=%d reason=%s",
                self.instance,
                term.number,
                exc,
            )
            raise

    # ------------------------------------------------------------------ operator actions

    async def acknowledge(self, alert_id: str, by: str, note: str = "") -> AckRecord:
        """Record ``by``'s acknowledgement of ``alert_id`` (state topic and an ``ack`` point).

        Raises:
            alerts.lifecycle.UnknownAlertError: no such alert.
            alerts.lifecycle.AckLimitError: the alert holds all the acknowledgements it may.
            ValueError: ``by`` or ``note`` too long.
            alerts.election.NotActiveError: this instance is not the active one.
        """
        async with self._lock:
            term = self._term
            if term is None or not term.active or term.stopping.is_set():
                role: Role = "standby" if self._role == "active" else self._role
                raise NotActiveError(role, "acknowledge on the active instance")
            before = self._state
            after, ack = acknowledge(
                before, alert_id, by, self._clock(), note, caps=self.lifecycle.caps
            )
            await self._fence(term)
            await self._write_state(state_updates(before, after))
            self._state = after
        # Written by the flush loop: an InfluxDB outage must not hold the operator's answer.
        self.points.add([ack_point(ack, self._buckets)])
        return ack

    # ------------------------------------------------------------------ internals

    async def _check_topics(self) -> None:
        """Create whatever topic of the deployment is missing, as the topology defines
        it (``alerts.state`` compacted: auto-creation would not make it so)."""
        await ensure_topics(self.settings.kafka.bootstrap, self.topics)
        missing = await wait_for_topics(
            self.settings.kafka.bootstrap,
            [
                self.topics.candidates,
                self.topics.alerts,
                self.topics.alert_state,
                self.topics.alert_subscriptions,
                self.topics.alert_deadletter,
            ],
        )
        if missing:
            msg = f"Kafka topics missing after creating them: {', '.join(missing)}"
            raise RuntimeError(msg)

    async def _load_state(self) -> LifecycleState:
        """Read ``alerts.state`` from the beginning to the end offsets of now."""
        topic = self.topics.alert_state
        # Without a group, a subscription is assigned every partition of the topic.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            client_id="civic-alerts-state",
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event
                    await asyncio.sleep(0.05)
            tps = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            records: list[tuple[bytes | None, bytes | None, int | None]] = []
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, recs in batch.items():
                    for r in recs:
                        if r.offset < end[tp]:
                            records.append((r.key, r.value, _version(r.headers)))
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        state = replay_state(records)
        logger.info(
            "alert state loaded topic=%s records=%d keys=%d open=%d",
            topic,
            len(records),
            len(state.records),
            len(state.open_alerts()),
        )
        return state

    async def _consume(self, term: _Term, consumer: AIOKafkaConsumer) -> None:
        while not term.stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            handled: dict[TopicPartition, int] = {}
            try:
                for tp, r in ((tp, r) for tp, recs in batch.items() for r in recs):
                    if not await self._on_candidate(term, r.value, tp.partition, r.offset):
                        break  # stepping down: the rest is for the next leader
                    handled[tp] = r.offset + 1
            finally:
                # Every handled candidate's messages are in the alerts topic, its state written.
                if handled:
                    await self._commit_candidates(term, consumer, handled)

    async def _commit_candidates(
        self, term: _Term, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> None:
        # A slow broker is no reason to give up leadership, but a step-down is on a budget.
        timeout_s = self._close_s if term.stopping.is_set() else self._grace_s
        try:
            async with asyncio.timeout(timeout_s):
                await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, TimeoutError) as exc:
            # The next leader re-reads these candidates; the lifecycle ignores what it has.
            msg = f"candidate offsets not committed for group {self.topics.alerts_group}"
            raise LostLeadershipError(msg) from exc

    async def _on_candidate(
        self, term: _Term, value: bytes | None, partition: int, offset: int
    ) -> bool:
        """Handle one candidate; False if the term is ending and it was left alone."""
        try:
            cand = AlertCandidate.model_validate_json(value or b"")
        except ValidationError as exc:
            self.metrics.candidates.labels("invalid").inc()
            logger.warning(
                "invalid alert candidate topic=%s partition=%d offset=%d errors=%d first=%s",
                self.topics.candidates,
                partition,
                offset,
                exc.error_count(),
                exc.errors()[0]["msg"] if exc.error_count() else "",
            )
            return True
        config = self.lifecycle
        try:
            taken = clamp_candidate(cand, config.caps)
        except CandidateRefusedError as exc:
            self.metrics.candidates.labels("invalid").inc()
            logger.warning(
                "alert candidate refused topic=%s partition=%d offset=%d reason=%s",
                self.topics.candidates,
                partition,
                offset,
                exc,
            )
            return True
        if taken is not cand:
            self.metrics.clamped.inc()
            logger.info("alert candidate clamped to the size caps key=%s", cand.key)
        if not await self._step(term, lambda s, now: on_candidate(s, taken, now, config=config)):
            return False
        self.metrics.candidates.labels("ok").inc()
        return True

    async def _tick_loop(self, term: _Term) -> None:
        config = self.lifecycle
        interval = self.settings.alerts.tick_interval_s
        while not term.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.stopping.wait(), interval)
            if term.stopping.is_set():
                return
            await self._step(term, lambda s, now: on_tick(s, now, config=config))

    async def _flush_loop(self) -> None:
        interval = self.settings.influx.flush_interval_ms / 1000
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            # Unavailable: the points stay in the sink (logged there), tried next round.
            with contextlib.suppress(StorageUnavailable):
                await self.points.flush()

    async def _watch_kafka(self) -> None:
        """For ``/health``: whether Kafka answers (the consumers and the producer keep
        retrying by themselves; this only tells)."""
        while not self._stopping.is_set():
            await self._kafka.ask(self._producer.client, KAFKA_ASK_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), KAFKA_ASK_INTERVAL_S)

    async def _close_points(self) -> None:
        """Store what the sink holds, within one write timeout; what InfluxDB does not take
        by then goes to storage.deadletter (the producer is still up), never dropped."""
        with contextlib.suppress(StorageUnavailable, TimeoutError):
            async with asyncio.timeout(self.settings.influx.write_timeout_s):
                await self.points.flush()
        try:
            await self.points.set_aside("InfluxDB unavailable when the alert service stopped")
        except StorageUnavailable:
            logger.exception("alert points lost at stop: neither InfluxDB nor Kafka took them")
        await self.points.close()

    async def _step(self, term: _Term, step: Step) -> bool:
        """Run one lifecycle step; persist messages and state before anything else sees it.

        Returns False (and does nothing) if ``term`` is ending or over.
        """
        async with self._lock:
            if self._term is not term or not term.active or term.stopping.is_set():
                return False
            before = self._state
            after, messages = step(before, self._clock())
            updates = state_updates(before, after)
            sent: list[AlertMessage] = []
            if messages or updates:
                await self._fence(term)
                if messages:
                    sent = await self._produce_messages(messages)
                await self._write_state(updates)
            self._state = after
        if after is not before:
            self.metrics.observe_state(after)
        for msg in sent:
            await self._dispatch(msg)
        return True

    async def _send_sized(
        self, topic: str, key: bytes, value: bytes | None, what: str, headers: Any = None
    ) -> asyncio.Future[Any] | None:
        """Hand one record to the producer, or refuse it (logged, counted) if too large."""
        size = len(key) + len(value or b"")
        try:
            if size > KAFKA_RECORD_BUDGET:
                msg = f"{size} bytes > {KAFKA_RECORD_BUDGET}"
                raise RecordTooLargeError(msg)
            fut: asyncio.Future[Any] = await self._producer.send(
                topic, value, key=key, headers=headers
            )
        except (RecordTooLargeError, MessageSizeTooLargeError) as exc:
            self._refused(topic, what, exc)
            return None
        return fut

    def _refused(self, topic: str, what: str, exc: BaseException) -> None:
        self.metrics.refused_records.labels(topic).inc()
        logger.error("record not written: too large topic=%s record=%s error=%s", topic, what, exc)

    async def _settle(self, pending: list[tuple[str, str, asyncio.Future[Any]]]) -> set[str]:
        """Wait for the broker's answers; the names of the records it took."""
        results = await asyncio.gather(*(f for _, _, f in pending), return_exceptions=True)
        taken: set[str] = set()
        for (topic, what, _), result in zip(pending, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                self._refused(topic, what, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                taken.add(what)
        return taken

    async def _produce_messages(self, messages: list[AlertMessage]) -> list[AlertMessage]:
        """Produce ``messages`` to the alerts topic; the ones Kafka took."""
        pending = []
        for msg in messages:
            key, value = alerts_topic_record(msg, self.status, cap_config=self.cap_config)
            fut = await self._send_sized(self.topics.alerts, key, value, msg.identifier)
            if fut is not None:
                pending.append((self.topics.alerts, msg.identifier, fut))
        taken = await self._settle(pending)
        done_s = self._clock().timestamp()
        sent = [m for m in messages if m.identifier in taken]
        for msg in sent:
            self.metrics.latency.labels("kafka").observe(done_s - msg.detected_at.timestamp())
        return sent

    async def _write_state(self, updates: list[tuple[bytes, bytes | None]]) -> None:
        if not updates:
            return
        header = [(STATE_VERSION_HEADER, str(STATE_VERSION).encode())]
        topic = self.topics.alert_state
        pending = []
        for key, value in updates:
            what = key.decode("utf-8", "replace")
            fut = await self._send_sized(topic, key, value, what, header)
            if fut is not None:
                pending.append((topic, what, fut))
        await self._settle(pending)

    async def _send_subscription(self, key: bytes, value: bytes | None) -> int:
        meta = await self._producer.send_and_wait(self.topics.alert_subscriptions, value, key=key)
        return int(meta.offset)

    async def _send_deadletter(self, key: bytes, value: bytes) -> None:
        await self._producer.send_and_wait(self.topics.alert_deadletter, value, key=key)

    async def _dispatch(self, msg: AlertMessage) -> None:
        self.metrics.messages.labels(msg.msg_type).inc()
        self.points.add([alert_point(msg, self.status, self._buckets)])
        for ch in self._channels:
            await ch.add(msg)

    async def _record_delivery(self, result: DeliveryResult) -> None:
        self.metrics.deliveries.labels(result.channel, result.outcome).inc()
        self.points.add([delivery_point(result, self._buckets)])
        if result.outcome == "delivered":
            seconds = (result.at_ns - result.message.detected_at_ns) / 1e9
            self.metrics.latency.labels(result.channel).observe(seconds)
        elif result.outcome == "failed" and result.channel == "mqtt":
            # A webhook's dead letter is written by its consumer before it commits.
            key, value = deadletter_record(result)
            try:
                await self._producer.send_and_wait(self.topics.alert_deadletter, value, key=key)
            except Exception:
                logger.exception(
                    "dead-letter write failed identifier=%s subscriber=%s",
                    result.message.identifier,
                    result.subscriber,
                )
            logger.error(
                "delivery failed channel=%s subscriber=%s identifier=%s attempts=%d error=%s",
                result.channel,
                result.subscriber,
                result.message.identifier,
                result.attempt,
                result.error,
            )


def _version(headers: Sequence[tuple[str, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == STATE_VERSION_HEADER:
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the service and its HTTP endpoint until ``stop`` is set (or SIGINT/SIGTERM)."""
    import signal  # noqa: PLC0415 - only the entry point handles signals

    from alerts.http import HttpServer  # noqa: PLC0415 - http depends on this module's views

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    limit_repeats("aiokafka")  # a Kafka outage: a line per interval, not per attempt
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    service = AlertService(settings)
    await service.start()
    http = HttpServer(
        service,
        host=settings.alerts.http_host,
        port=settings.alerts.http_port,
        max_body_bytes=settings.alerts.http_max_body_bytes,
    )
    try:
        await http.start()
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(service.wait()),
        ]
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()  # re-raise a failed background task
    finally:
        await http.stop()
        await service.stop()
