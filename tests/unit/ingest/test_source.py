"""``MqttSource``: ingest's side of ``civic_iot.mqtt`` (the reader itself is tested in
``tests/unit/core/test_mqtt.py``). No broker: paho writes to a recording socket."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from civic_iot.mqtt import Message
from civic_iot.settings import Settings
from ingest.service import Inbound, MqttSource, subscriptions


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def close(self) -> None:
        pass


def settings_with(**ingest: object) -> Settings:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    return base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"ingest_password": SecretStr("x")}),
            "ingest": base.ingest.model_copy(update=ingest),
        }
    )


def source_with(reader: str) -> MqttSource:
    return MqttSource(settings_with(mqtt_reader=reader))


@pytest.mark.parametrize("reader", ["own", "paho"])
def test_the_settings_choose_the_reader_and_the_session(reader: str) -> None:
    source = source_with(reader)
    client = source.mqtt.client
    assert source.mqtt.client_id == "civic-ingest-0"
    assert client._manual_ack  # PUBACKs only once Kafka has the readings
    assert hasattr(client, "read_publishes") is (reader == "own")


def test_messages_of_one_read_land_in_the_inbox_in_order_with_one_arrival_time() -> None:
    source = source_with("own")
    batch = [Message(f"devices/a-{i}/air", b"{}", i + 1, 1, False) for i in range(3)]
    before = datetime.now(UTC)
    source._on_messages(batch)
    got = source.take(10)
    assert [(m.topic, m.mid) for m in got] == [(m.topic, m.mid) for m in batch]
    assert len({m.received_at for m in got}) == 1
    assert got[0].received_at >= before
    assert source.pending == 0


def test_wait_returns_for_a_message_or_a_kick() -> None:
    source = source_with("own")

    async def scenario() -> list[str]:
        seen = []
        waiter = asyncio.create_task(source.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        source.kick()
        await asyncio.wait_for(waiter, 1)
        seen.append("kicked")
        waiter = asyncio.create_task(source.wait())
        await asyncio.sleep(0)
        source._on_messages([Message("devices/a-1/air", b"{}", 1, 1, False)])
        await asyncio.wait_for(waiter, 1)
        seen.append("message")
        return seen

    assert asyncio.run(scenario()) == ["kicked", "message"]


@pytest.mark.parametrize("reader", ["own", "paho"])
def test_a_batch_is_acknowledged_in_arrival_order_qos0_needs_none(reader: str) -> None:
    source = source_with(reader)
    client = source.mqtt.client
    sock = RecordingSocket()
    client._sock = sock  # type: ignore[assignment]
    now = datetime.now(UTC)
    batch = [
        Inbound("devices/a-1/air", b"{}", mid, qos, now) for mid, qos in [(7, 1), (0, 0), (9, 1)]
    ]
    source.ack(batch, 0)
    client.loop_write()
    assert b"".join(sock.sent) == b"\x40\x02\x00\x07\x40\x02\x00\x09"
    assert len(sock.sent) == (1 if reader == "own" else 2)  # own: one write per batch
    client._sock = None


def test_the_default_subscription_is_exclusive_and_survives_a_broker_restart() -> None:
    """Mosquitto keeps a plain subscription of a persistent session across its restart,
    never a shared one (bench/mosquitto_shared_restart.sh shows it)."""
    mine, stale = subscriptions(settings_with())
    assert mine == ["devices/#"]
    assert stale == ["$share/ingest/devices/#"]  # left by an earlier shared run: dropped


def test_shared_and_partitioned_layouts() -> None:
    mine, stale = subscriptions(settings_with(subscription="shared"))
    assert mine == ["$share/ingest/devices/#"]
    assert stale == ["devices/#"]
    mine, _ = subscriptions(settings_with(topic_filters=" devices/+/water, devices/+/seismic "))
    assert mine == ["devices/+/water", "devices/+/seismic"]
    with pytest.raises(ValueError, match="TOPIC_FILTERS"):
        subscriptions(settings_with(topic_filters=" , "))


def test_messages_of_an_earlier_connection_are_never_acknowledged_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A packet id belongs to its connection: after a reconnect the broker sends again
    what it did not see acknowledged, and may give an old id to another message."""
    source = source_with("own")
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(source.mqtt, "subscribe", lambda t, qos: calls.append(("sub", t)))
    monkeypatch.setattr(source.mqtt, "unsubscribe", lambda t: calls.append(("unsub", t)))
    client = source.mqtt.client
    sock = RecordingSocket()
    client._sock = sock  # type: ignore[assignment]
    source._on_connect(session_present=False)
    assert calls == [("sub", "devices/#")]
    source._on_messages([Message("devices/a-1/air", b"{}", mid, 1, False) for mid in (1, 2)])
    first = source.taken
    old = source.take(1)  # on its way to Kafka when the connection drops
    source._on_connect(session_present=True)
    assert calls[1:] == [("unsub", "$share/ingest/devices/#"), ("sub", "devices/#")]
    source._on_messages([Message("devices/a-1/air", b"{}", 1, 1, True)])  # sent again
    rest_first = source.taken
    rest = source.take(10)  # message 2 (old connection) and the redelivered 1
    source.ack(old, first)
    source.ack(rest, rest_first)
    client.loop_write()
    assert b"".join(sock.sent) == b"\x40\x02\x00\x01"  # only the redelivered message
    client._sock = None
