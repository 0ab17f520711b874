"""The pure parts of the leader election, and what a standby answers (no Kafka, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from alerts.election import (
    ROLES,
    LeaderAssignor,
    LostLeadershipError,
    NotActiveError,
    choose_leader,
    decode_claim,
    encode_claim,
)
from alerts.service import AlertMetrics
from civic_iot.settings import AlertSettings
from civic_iot.topology import Topology

TOPIC = "t-alerts.leader"

# --------------------------------------------------------------------------- choose_leader


@pytest.mark.parametrize(
    ("claims", "leader"),
    [
        ({}, None),
        ({"b": None}, "b"),
        # Nobody holds it (first election, or the holder left): the lowest member id.
        ({"m-2": None, "m-1": None, "m-3": None}, "m-1"),
        # The holder keeps it when a standby joins, whatever the ids.
        ({"a-new": None, "z-holder": 1_700_000_000_000}, "z-holder"),
        # A removed member rejoining with its old claim loses to the one elected after it.
        ({"a-zombie": 1_700_000_000_000, "z-new": 1_700_000_060_000}, "z-new"),
        # Equal claims: the lowest member id, so every member computes the same answer.
        ({"b": 5, "a": 5, "c": None}, "a"),
    ],
    ids=["empty", "alone", "no-claims", "holder-stays", "newest-holder", "tie"],
)
def test_choose_leader(claims: dict[str, int | None], leader: str | None) -> None:
    assert choose_leader(claims) == leader


@pytest.mark.parametrize(
    ("data", "claim"),
    [
        (b"", None),
        (None, None),
        (b"1700000000000", 1_700_000_000_000),
        (b"0", None),
        (b"-5", None),
        (b"not a number", None),
        (b"\xff\xfe", None),
    ],
)
def test_decode_claim_accepts_only_a_positive_time(data: bytes | None, claim: int | None) -> None:
    assert decode_claim(data) == claim


def test_claim_round_trip() -> None:
    assert decode_claim(encode_claim(1_700_000_000_123)) == 1_700_000_000_123
    assert encode_claim(None) == b""


# --------------------------------------------------------------------------- assignor


@dataclass
class _Cluster:
    partitions: dict[str, set[int]]

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


def _member(held_since_ms: int | None = None) -> ConsumerProtocolMemberMetadata:
    return ConsumerProtocolMemberMetadata(0, [TOPIC], encode_claim(held_since_ms))


def _round_trip(md: ConsumerProtocolMemberMetadata) -> ConsumerProtocolMemberMetadata:
    """What the group coordinator hands the assigning member: the encoded bytes, decoded."""
    return ConsumerProtocolMemberMetadata.decode(md.encode())


def test_assignor_gives_every_partition_to_one_member() -> None:
    cluster = _Cluster({TOPIC: {0}})
    members = {"m-b": _round_trip(_member()), "m-a": _round_trip(_member())}
    out = LeaderAssignor().assign(cluster, members)
    assert out["m-a"].partitions() == [TopicPartition(TOPIC, 0)]
    assert out["m-b"].partitions() == []
    # A topic created with more partitions by mistake still has one leader.
    out = LeaderAssignor().assign(_Cluster({TOPIC: {0, 1, 2}}), members)
    assert len(out["m-a"].partitions()) == 3
    assert out["m-b"].partitions() == []


def test_assignor_keeps_the_holder_and_records_since_when() -> None:
    now = [1_000]
    holder, joiner = LeaderAssignor(lambda: now[0]), LeaderAssignor(lambda: now[0])
    cluster = _Cluster({TOPIC: {0}})

    def rebalance(members: dict[str, LeaderAssignor]) -> None:
        meta = {m: _round_trip(a.metadata([TOPIC])) for m, a in members.items()}
        out = members[min(members)].assign(cluster, meta)  # any member may compute it
        for m, a in members.items():
            a.on_assignment(ConsumerProtocolMemberAssignment.decode(out[m].encode()))

    rebalance({"z-first": holder})
    assert holder.held_since_ms == 1_000
    now[0] = 2_000
    # A standby with a lower member id joins: leadership stays, and so does its start time.
    rebalance({"z-first": holder, "a-second": joiner})
    assert (holder.held_since_ms, joiner.held_since_ms) == (1_000, None)
    assert decode_claim(holder.metadata([TOPIC]).user_data) == 1_000
    # The holder leaves: the standby gets it, from now on.
    now[0] = 3_000
    rebalance({"a-second": joiner})
    assert joiner.held_since_ms == 3_000


def test_assignor_leaves_an_unknown_topic_unassigned() -> None:
    out = LeaderAssignor().assign(_Cluster({}), {"m": _round_trip(_member())})
    assert out["m"].partitions() == []


def test_leader_topic_name_follows_the_prefix() -> None:
    assert Topology(prefix="t-1-").alert_leader == "t-1-alerts.leader"
    assert Topology().alert_leader == "alerts.leader"


# --------------------------------------------------------------------------- settings, errors


def test_settings_default_takeover_times() -> None:
    a = AlertSettings()
    assert (a.session_timeout_s, a.heartbeat_interval_s) == (10.0, 3.0)


def test_settings_refuse_a_heartbeat_too_slow_for_the_session() -> None:
    with pytest.raises(ValidationError, match="at most a third"):
        AlertSettings(session_timeout_s=6, heartbeat_interval_s=3)
    assert AlertSettings(session_timeout_s=6, heartbeat_interval_s=2).heartbeat_interval_s == 2


def test_not_active_error_names_the_role() -> None:
    assert str(NotActiveError("standby", "acknowledge on the active instance")) == (
        "this alert service instance is standby, not active: acknowledge on the active instance"
    )
    assert "taking over" in str(NotActiveError("taking_over"))
    lost = LostLeadershipError("removed from the group")
    assert isinstance(lost, NotActiveError)
    assert lost.role == "standby"


def test_role_gauge_has_one_role_set() -> None:
    metrics = AlertMetrics()

    def roles() -> dict[str, float]:
        text = metrics.render()[0].decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("civic_alerts_role{"):
                name = line.split('role="')[1].split('"')[0]
                out[name] = float(line.rsplit(" ", 1)[1])
        return out

    assert roles() == {r: float(r == "joining") for r in ROLES}
    metrics.observe_role("standby")
    assert roles() == {r: float(r == "standby") for r in ROLES}
