"""Which alert-service instance is active: a leader election on a Kafka consumer group.

Every instance joins one consumer group on the single-partition topic ``alerts.leader``
(:attr:`civic_iot.topology.Topology.alert_leader`; the group has the same name as the topic,
so each topic prefix, that is each ``alerts.state``, has its own election). The member the
group assigns that partition is the **active** instance; the others are **standby**. When
the active member leaves the group (a clean stop) or stops heartbeating for the session
timeout (a crash, a frozen process, a network cut), Kafka rebalances and assigns the
partition to another member. The topic carries no records: only the assignment matters.

Two things here are Kafka-specific and worth knowing:

- The assignor (:class:`LeaderAssignor`) keeps the partition where it is: each member
  tells the group since when it has held the partition, and the most recent holder keeps
  it, so a standby joining or leaving does not move leadership (the default round-robin
  assignor would give it to the lowest member id). Whoever is chosen, the handover is
  safe: every live member gives the partition up (``on_partitions_revoked``) before any
  member gets it again; one the group removed without hearing from it is what the fence
  is for.
- :meth:`LeaderElection.fence` asks the broker whether this member still owns the
  partition in the group's current generation, by committing an offset on the election
  group: the group coordinator refuses a commit from a member it removed or from a
  generation that is over. The service calls it right before each write. It is a check,
  not a lock: see :mod:`alerts.service` for what that does and does not guarantee.

The pure parts (:func:`choose_leader`, :func:`encode_claim`, :func:`decode_claim`) are
tested without Kafka; :class:`LeaderElection` is the thin I/O around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from alerts.text import get_logger

logger = get_logger(__name__)

__all__ = [
    "ROLES",
    "LeaderAssignor",
    "LeaderElection",
    "LostLeadershipError",
    "NotActiveError",
    "Role",
    "choose_leader",
    "decode_claim",
    "encode_claim",
]

#: ``joining``: started, the election has not answered yet. ``standby``: a member of the
#: election group without the partition. ``taking_over``: elected, rebuilding the state
#: and joining the candidate group. ``active``: consuming candidates, ticking, taking
#: acknowledgements.
Role = Literal["joining", "standby", "taking_over", "active"]
ROLES: tuple[Role, ...] = ("joining", "standby", "taking_over", "active")


class NotActiveError(RuntimeError):
    """This instance is not the active one, so it does not change the lifecycle state."""

    def __init__(self, role: Role, detail: str = "") -> None:
        self.role = role
        text = f"this alert service instance is {role.replace('_', ' ')}, not active"
        super().__init__(f"{text}: {detail}" if detail else text)


class LostLeadershipError(NotActiveError):
    """The broker no longer counts this member as the owner of the election partition."""

    def __init__(self, detail: str) -> None:
        super().__init__("standby", detail)


# --------------------------------------------------------------------------- pure


def encode_claim(held_since_ms: int | None) -> bytes:
    """A member's claim in its group metadata: since when it holds the partition (ms)."""
    return b"" if held_since_ms is None else str(held_since_ms).encode("ascii")


def decode_claim(data: bytes | None) -> int | None:
    """The claim of :func:`encode_claim`; anything else (another version) is no claim."""
    if not data:
        return None
    try:
        value = int(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if value > 0 else None


def choose_leader(claims: Mapping[str, int | None]) -> str | None:
    """The member that gets the election partition, from each member's claim.

    A member that holds the partition keeps it (a standby joining or leaving does not move
    leadership). Two claimants happen when a member was removed for missing heartbeats and
    rejoins before it noticed: the more recent holder (the one elected after it) wins.
    Claims are the members' wall-clock times; skewed clocks can only make the older one
    win, which costs a needless handover, never two leaders (the old leader gives the
    partition up before anyone is assigned it). With no claim at all, or equal claims,
    the lowest member id wins, so every member computing this agrees. ``None`` for an
    empty group.
    """
    if not claims:
        return None
    return min(claims, key=lambda m: (-(claims[m] or 0), m))


# --------------------------------------------------------------------------- assignor


class _Cluster(Protocol):
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class LeaderAssignor:
    """Gives every partition of the subscribed topic to :func:`choose_leader`'s member.

    aiokafka calls ``name``, ``metadata``, ``assign`` and ``on_assignment`` on the objects
    in ``partition_assignment_strategy``; one instance per member keeps that member's claim.
    """

    name = "civic-leader"
    version = 0

    def __init__(self, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._clock_ms = clock_ms
        #: Since when (ms since the epoch) this member holds the partition; None: it doesn't.
        self.held_since_ms: int | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(
            self.version, sorted(topics), encode_claim(self.held_since_ms)
        )

    def assign(
        self, cluster: _Cluster, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        leader = choose_leader({m: decode_claim(md.user_data) for m, md in members.items()})
        topics = sorted({t for md in members.values() for t in md.subscription})
        out: dict[str, ConsumerProtocolMemberAssignment] = {}
        for member in members:
            parts = []
            if member == leader:
                for topic in topics:
                    partitions = cluster.partitions_for_topic(topic)
                    if partitions:
                        parts.append((topic, sorted(partitions)))
            out[member] = ConsumerProtocolMemberAssignment(self.version, parts, b"")
        return out

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        if not assignment.partitions():
            self.held_since_ms = None
        elif self.held_since_ms is None:
            self.held_since_ms = self._clock_ms()


# --------------------------------------------------------------------------- I/O


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka is untyped
    def __init__(self, election: LeaderElection) -> None:
        self._election = election

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._election._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._election._assigned(set(assigned))


class LeaderElection:
    """One member of the election group.

    ``on_elected(True)`` when this member was assigned the partition, ``on_elected(False)``
    when a rebalance ended without it; both must return at once (aiokafka does not
    heartbeat while the assignment callback runs). ``on_revoked`` is awaited when the
    partition is taken away, and must return only when this instance writes nothing more:
    the group waits for it (up to the rebalance timeout, which is the session timeout)
    before anyone else is assigned the partition.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        client_id: str,
        session_timeout_s: float,
        heartbeat_interval_s: float,
        on_elected: Callable[[bool], None],
        on_revoked: Callable[[], Awaitable[None]],
    ) -> None:
        self.topic = topic
        self.group_id = topic
        self._tp = TopicPartition(topic, 0)
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._session_ms = round(session_timeout_s * 1000)
        self._heartbeat_ms = round(heartbeat_interval_s * 1000)
        self._fence_timeout_s = session_timeout_s / 4
        self._on_elected = on_elected
        self._on_revoked = on_revoked
        self._assignor = LeaderAssignor()
        self._consumer: AIOKafkaConsumer | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._leader = False

    @property
    def is_leader(self) -> bool:
        """The last assignment gave this member the partition, and it was not revoked."""
        return self._leader

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=self._session_ms,
            heartbeat_interval_ms=self._heartbeat_ms,
            # A member must rejoin within this after a rebalance starts; the active one
            # first steps down (on_revoked), which is bounded well below it.
            rebalance_timeout_ms=self._session_ms,
            partition_assignment_strategy=(self._assignor,),
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer
        self._poll_task = asyncio.create_task(self._poll(consumer), name="alerts-election")

    async def wait(self) -> None:
        """Return when the election stops; raise its error (a group or broker failure)."""
        if self._poll_task is not None:
            await self._poll_task

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        # aiokafka leaves the group when the consumer is not polled for
        # max_poll_interval_ms, and surfaces group errors through getmany.
        while True:
            await consumer.getmany(timeout_ms=1000)

    async def fence(self) -> None:
        """Return only if the broker still counts this member as the partition's owner.

        Raises:
            LostLeadershipError: the commit was refused (this member was removed, or the
                group is past the point where this member could still commit), or not
                answered within a quarter of the session timeout.
        """
        consumer = self._consumer
        if consumer is None or not self._leader:
            msg = f"not assigned the partition of election group {self.group_id}"
            raise LostLeadershipError(msg)
        try:
            async with asyncio.timeout(self._fence_timeout_s):
                await consumer.commit({self._tp: 0})
        except (CommitFailedError, IllegalStateError) as exc:
            msg = f"election group {self.group_id} refused this member: {exc}"
            raise LostLeadershipError(msg) from exc
        except TimeoutError as exc:
            msg = (
                f"election group {self.group_id} did not confirm this member within "
                f"{self._fence_timeout_s:.1f} s"
            )
            raise LostLeadershipError(msg) from exc
        except KafkaError as exc:
            msg = f"election group {self.group_id}: {exc!r}"
            raise LostLeadershipError(msg) from exc

    async def stop(self) -> None:
        """Leave the group at once (a standby is elected without waiting for a timeout)."""
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await self._poll_task
            self._poll_task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._leader = False

    # ------------------------------------------------------------------ callbacks

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        if self._tp not in revoked:
            return
        logger.info("alerts leadership revoked group=%s", self.group_id)
        # Still the owner until this returns (the group waits for it): the step in flight
        # may pass the fence and finish its writes; no new step starts meanwhile.
        try:
            await self._on_revoked()
        finally:
            self._leader = False

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self._leader = self._tp in assigned
        logger.info(
            "alerts election settled group=%s role=%s",
            self.group_id,
            "leader" if self._leader else "standby",
        )
        self._on_elected(self._leader)
