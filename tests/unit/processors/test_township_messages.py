"""The township agent's messages: every township of a partition in one message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from civic_iot.contracts.processing import TownshipReport, TownshipReports
from processors.agents.township import decode_reports, encode_reports, partition_of

T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _report(township: str, device: str, level: int) -> TownshipReport:
    return TownshipReport(
        township=township,
        hazard="air_quality",
        device=device,
        level=level,
        value=100.0 + level,
        metric="aqi",
        event_time=T,
    )


@pytest.mark.parametrize("partitions", [1, 3, 4, 12])
def test_partition_of_is_the_producers_partition_of_the_key(partitions: int) -> None:
    # Every township of a message must land where its own key would: the producer's
    # default partitioner (Kafka's murmur2) decides where a keyed message goes.
    every = list(range(partitions))
    for code in ["63000010", "10002100", "68000020", "65000060", "0", "台北"]:
        expected = DefaultPartitioner()(code.encode(), every, every)
        assert partition_of(code, partitions) == expected


def test_reports_of_many_townships_round_trip_in_order() -> None:
    messages = [
        TownshipReports(township="63000010", reports=(_report("63000010", "air-1", 2),)),
        TownshipReports(
            township="10002100",
            reports=(_report("10002100", "air-7", 0), _report("10002100", "air-8", 1)),
        ),
    ]
    assert decode_reports(encode_reports(messages)) == messages


def test_messages_written_before_still_decode() -> None:
    # One township's reports as one message (before this layout), and one report alone
    # (before batches).
    one = TownshipReports(township="63000010", reports=(_report("63000010", "air-1", 2),))
    assert decode_reports(one.model_dump_json().encode()) == [one]
    single = _report("63000010", "air-2", 1)
    assert decode_reports(single.model_dump_json().encode()) == [
        TownshipReports(township="63000010", reports=(single,))
    ]


def test_a_line_that_is_no_report_fails_the_message() -> None:
    good = TownshipReports(township="63000010", reports=(_report("63000010", "air-1", 2),))
    with pytest.raises(ValidationError):
        decode_reports(encode_reports([good]) + b"\n{not json")
