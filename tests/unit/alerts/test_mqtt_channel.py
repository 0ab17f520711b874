"""``MqttChannel``'s guarantees without a broker: in order per topic, retained, a missing
PUBACK waited for again (``retry``) and never published twice, a refusal ``failed``.

The connection is a recording stand-in with :class:`civic_iot.mqtt.MqttConnection`'s
``publish`` (a leaf client): the test decides when each PUBACK comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from pydantic import SecretStr

from alerts.delivery import DeliveryResult, MqttChannel, mqtt_topic
from civic_iot.mqtt import Reason
from tests.unit.alerts.factories import lifecycle_messages

SUCCESS = Reason(0x00, "Success")


class RecordingConnection:
    """What the channel calls on its connection, recorded; PUBACKs come when told."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.acks: list[asyncio.Future[Reason]] = []
        self.connected = True
        self.changed = asyncio.Event()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> asyncio.Future[Reason]:
        self.published.append((topic, payload, retain))
        ack: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        self.changed.set()
        return ack


async def until(done: Callable[[], bool], changed: asyncio.Event) -> None:
    while not done():
        changed.clear()
        await changed.wait()


def channel(results: list[DeliveryResult]) -> tuple[MqttChannel, RecordingConnection]:
    async def report(result: DeliveryResult) -> None:
        results.append(result)
        conn.changed.set()

    ch = MqttChannel(
        host="127.0.0.1",
        port=1883,
        username="civic-alerts",
        password=SecretStr("x"),
        status="Exercise",
        report=report,
        publish_timeout_s=0.05,
        max_attempts=4,
        root="runs/t/alerts",
    )
    conn = RecordingConnection()
    ch._mqtt = conn  # type: ignore[assignment]
    return ch, conn


async def _run(ch: MqttChannel) -> asyncio.Task[None]:
    return asyncio.create_task(ch._run())


def test_alert_update_cancel_go_out_in_order_retained_then_cleared() -> None:
    results: list[DeliveryResult] = []
    ch, conn = channel(results)
    alert, update, cancel = lifecycle_messages("flood")

    async def scenario() -> None:
        worker = await _run(ch)
        for msg in (alert, update, cancel):
            await ch.add(msg)
        await until(lambda: len(conn.acks) == 4, conn.changed)
        for ack in conn.acks:
            ack.set_result(SUCCESS)
        await ch.flush()
        worker.cancel()

    asyncio.run(scenario())
    topic = mqtt_topic(alert, "runs/t/alerts")
    assert [(t, r) for t, _, r in conn.published] == [
        (topic, True),
        (topic, True),
        (topic, False),  # live subscribers see the Cancel itself...
        (topic, True),  # ...then the retained state is cleared
    ]
    assert [json.loads(p)["msg_type"] for _, p, _ in conn.published[:3]] == [
        "Alert",
        "Update",
        "Cancel",
    ]
    assert conn.published[3][1] == b""
    assert [(r.message.msg_type, r.outcome) for r in results] == [
        ("Alert", "delivered"),
        ("Update", "delivered"),
        ("Cancel", "delivered"),
    ]


def test_a_late_puback_is_waited_for_again_never_published_twice() -> None:
    results: list[DeliveryResult] = []
    ch, conn = channel(results)
    alert = lifecycle_messages("flood")[0]

    async def scenario() -> None:
        worker = await _run(ch)
        await ch.add(alert)
        # Two timeouts: the broker (or the link) is slow.
        await until(lambda: len(results) == 2, conn.changed)
        conn.acks[0].set_result(SUCCESS)
        await ch.flush()
        worker.cancel()

    asyncio.run(scenario())
    assert len(conn.published) == 1
    assert [(r.outcome, r.attempt) for r in results] == [
        ("retry", 1),
        ("retry", 2),
        ("delivered", 3),
    ]
    assert "no PUBACK within 0.05 s" in results[0].error


def test_no_puback_at_all_fails_after_the_last_attempt() -> None:
    results: list[DeliveryResult] = []
    ch, conn = channel(results)
    alert = lifecycle_messages("flood")[0]

    async def scenario() -> None:
        worker = await _run(ch)
        await ch.add(alert)
        await ch.flush()
        worker.cancel()

    asyncio.run(scenario())
    assert len(conn.published) == 1
    assert [r.outcome for r in results] == ["retry", "retry", "retry", "failed"]


def test_a_refused_puback_fails_at_once_with_the_reason() -> None:
    results: list[DeliveryResult] = []
    ch, conn = channel(results)
    alert = lifecycle_messages("flood")[0]

    async def scenario() -> None:
        worker = await _run(ch)
        await ch.add(alert)
        await until(lambda: bool(conn.acks), conn.changed)
        conn.acks[0].set_result(Reason(0x87, "Not authorized"))
        await ch.flush()
        worker.cancel()

    asyncio.run(scenario())
    [result] = results
    assert (result.outcome, result.error) == ("failed", "PUBACK Not authorized")
