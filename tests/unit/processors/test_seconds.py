"""The stations' batch-closing rule (processors.agents.seconds): pure."""

from __future__ import annotations

from datetime import UTC, datetime

from civic_iot.contracts.readings import Location, Reading, SeismicPayload, record_value
from processors.agents.seconds import StreamSeconds, packet_seconds

T0 = 1_795_564_800


def second(seconds: StreamSeconds, partition: int, stations: list[str], s: int) -> list[bool]:
    """Each station's packet of second ``s`` as a record of its own; what ``add`` said."""
    return [seconds.add(partition, [(st, s)]) for st in stations]


def test_a_second_is_complete_once_every_station_of_the_second_before_sent_it() -> None:
    seconds = StreamSeconds()
    assert second(seconds, 0, ["a", "b", "c"], T0) == [False, False, False]  # nothing known
    assert second(seconds, 0, ["b", "a", "c"], T0 + 1) == [False, False, True]
    assert second(seconds, 0, ["c", "a", "b"], T0 + 2) == [False, False, True]


def test_every_active_partition_must_have_the_newest_second() -> None:
    seconds = StreamSeconds()
    second(seconds, 0, ["a", "b"], T0)
    second(seconds, 1, ["c"], T0)
    assert second(seconds, 0, ["a", "b"], T0 + 1) == [False, False]  # partition 1 behind
    assert second(seconds, 1, ["c"], T0 + 1) == [True]
    # One record may carry the packets of several stations.
    assert not seconds.add(1, [("c", T0 + 2)])
    assert seconds.add(0, [("a", T0 + 2), ("b", T0 + 2)])


def test_a_station_that_stops_holds_one_second_open_only() -> None:
    seconds = StreamSeconds()
    second(seconds, 0, ["a", "b"], T0)
    assert second(seconds, 0, ["a"], T0 + 1) == [False]  # b is due: the wait decides
    assert second(seconds, 0, ["a"], T0 + 2) == [True]  # b is no longer expected
    # Back again: not waited for in the second it comes back, from the next one on.
    assert second(seconds, 0, ["a", "b"], T0 + 3) == [True, True]
    assert second(seconds, 0, ["a", "b"], T0 + 4) == [False, True]


def test_a_silent_partition_is_waited_for_one_second_only() -> None:
    seconds = StreamSeconds()
    second(seconds, 0, ["a"], T0)
    second(seconds, 1, ["c"], T0)
    assert second(seconds, 0, ["a"], T0 + 1) == [False]  # partition 1 sent T0: active
    assert second(seconds, 0, ["a"], T0 + 2) == [True]  # silent since: not waited for
    assert second(seconds, 1, ["c"], T0 + 3) == [False]  # after a gap nothing is known
    assert second(seconds, 0, ["a"], T0 + 3) == [False]
    assert second(seconds, 0, ["a"], T0 + 4) == [False]
    assert second(seconds, 1, ["c"], T0 + 4) == [True]


def test_stragglers_and_repeats_change_nothing() -> None:
    seconds = StreamSeconds()
    second(seconds, 0, ["a", "b"], T0)
    assert second(seconds, 0, ["a"], T0 + 1) == [False]
    assert second(seconds, 0, ["b"], T0) == [False]  # a late packet of the second before
    assert second(seconds, 0, ["a"], T0 + 1) == [False]  # a duplicate
    assert second(seconds, 0, ["b"], T0 + 1) == [True]


def test_after_a_gap_nothing_is_known_to_be_due() -> None:
    seconds = StreamSeconds()
    second(seconds, 0, ["a", "b"], T0)
    assert second(seconds, 0, ["a", "b"], T0 + 5) == [False, False]
    assert second(seconds, 0, ["a", "b"], T0 + 6) == [False, True]


def _line(device: str, t: datetime) -> bytes:
    return Reading(
        reading_id=f"{device}:{int(t.timestamp() * 1e9)}",
        device_id=device,
        kind="seismic",
        event_time=t,
        received_at=t,
        location=Location(lat=25.0, lon=121.5, township="63000030"),
        data=SeismicPayload(ts=t, sample_rate_hz=100, x_gal=[0.1], y_gal=[0.1], z_gal=[0.1]),
    ).to_record()


def test_packet_seconds_reads_the_reading_ids_of_a_record() -> None:
    t = datetime.fromtimestamp(T0 + 0.999, UTC)
    value = record_value([_line("seis-0001", t), _line("a:b", t.replace(microsecond=0))])
    assert packet_seconds(value) == [("seis-0001", T0), ("a:b", T0)]


def test_packet_seconds_leaves_out_what_ingest_did_not_write() -> None:
    assert packet_seconds(b'{"v":1}\n{"reading_id":"x"}\n{"reading_id":"x:1e9"}\nnot json') == []
