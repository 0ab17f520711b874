"""The Taiwan-scale benchmark's pure helpers (bench/taiwan.py): fleet sizes and subsets,
the scenario, the judgement of a run, the log and alert arithmetic, the storage lines."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from bench.taiwan import (
    alert_latencies,
    candidate_times,
    fleet,
    held,
    lean_lines,
    offered_rates,
    packed_line,
    per_sample_lines,
    shares,
    stages,
    taiwan_scenario,
    taiwan_spec,
    text_line,
    text_samples,
    unpack,
)
from civic_iot.contracts.readings import SeismicPayload
from civic_iot.storage import waveform
from simulator.network import build_network


def test_full_scale_is_taiwans_network_and_scales_down() -> None:
    full = taiwan_spec(1.0)
    assert (full.air, full.river + full.flood + full.rain, full.seismic) == (17_300, 1_000, 615)
    quarter = taiwan_spec(0.25)
    assert (quarter.air, quarter.river + quarter.flood + quarter.rain) == (4_325, 250)
    assert quarter.seismic == 154


def test_offered_rates_are_taiwans_message_rates() -> None:
    rates = offered_rates(taiwan_spec(1.0))
    assert rates["air"] == pytest.approx(17_300 / 60)
    assert rates["water"] == pytest.approx(100.0)
    assert rates["seismic"] == 615.0
    assert rates["seismic samples"] == 615 * 300


def test_fleet_takes_each_kind_and_water_sensor_at_scale() -> None:
    registry = build_network(spec=taiwan_spec(0.02))
    small = fleet(registry, 0.01)
    kinds = [d.sensor if d.kind == "water" else d.kind for d in small]
    want = taiwan_spec(0.01)
    assert kinds.count("air") == want.air
    assert kinds.count("seismic") == want.seismic
    assert kinds.count("river") == want.river
    assert kinds.count("rain") == want.rain
    assert small.townships == registry.townships


def test_fleet_refuses_a_registry_too_small_for_the_scale() -> None:
    with pytest.raises(ValueError, match="lacks devices"):
        fleet(build_network(spec=taiwan_spec(0.01)), 0.5)


def test_scenario_reports_at_taiwans_rates_with_the_quake_half_way() -> None:
    sc = taiwan_scenario(120.0)
    assert sc.sample_rate_hz == 100.0
    assert sc.air_interval_s == (60.0, 60.0)
    assert sc.water_interval_s == (10.0, 10.0)
    (phase,) = sc.phases
    assert phase.seismic
    assert phase.duration == 120.0
    (quake,) = phase.events
    assert quake.at == 60.0  # type: ignore[union-attr]


def test_held_needs_everything_stored_and_a_short_drain() -> None:
    offered = {"air": 10, "seismic": 5}
    assert held(offered, {"air": 10, "seismic": 5}, 2.0, 5.0)
    assert not held(offered, {"air": 9, "seismic": 5}, 2.0, 5.0)
    assert not held(offered, {"air": 10, "seismic": 5}, 7.0, 5.0)
    assert not held(offered, {"air": 10, "seismic": 5}, None, 5.0)


def test_shares_are_cpu_seconds_per_wall_second() -> None:
    assert shares({"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0, "c": 9.0}, 4.0) == {
        "a": 0.5,
        "b": 0.25,
    }


def test_candidate_times_give_the_deciding_record_from_the_log_line() -> None:
    log = (
        "2026-12-01 18:00:00,250 INFO processors.agents.quake quake candidate "
        "latency_ms=150.0 from_trigger_ms=900.0\n"
        "2026-12-01 18:00:01,000 INFO other line\n"
        "[2026-12-01 18:00:02,500] [3450] [INFO] quake candidate latency_ms=80.5 "
        "from_trigger_ms=80.5\n"
    )
    (record_ms, latency), (faust_ms, faust_latency) = candidate_times(log)
    line_ms = time.mktime(time.strptime("2026-12-01 18:00:00", "%Y-%m-%d %H:%M:%S")) * 1000 + 250
    assert latency == 150.0
    assert record_ms == line_ms - 150.0
    # Faust's own log format (the worker's lines once it runs).
    assert faust_latency == 80.5
    assert faust_ms == line_ms + 2250 - 80.5


def test_alert_latency_is_the_first_message_after_each_candidate() -> None:
    candidates = [(1000.0, 100.0), (3000.0, 50.0), (5000.0, 10.0)]  # logged 1100, 3050, 5010
    # Before any candidate: ignored; a burst (one per township) counts once; the third
    # candidate brought no message.
    arrivals = [3400.0, 1300.0, 900.0, 1310.0, 3420.0]
    assert alert_latencies(candidates, arrivals) == [300.0, 400.0]
    # The Cancel a minute after the last candidate is not that candidate's alert.
    assert alert_latencies(candidates, [*arrivals, 70_000.0]) == [300.0, 400.0]
    assert alert_latencies(candidates, [*arrivals, 70_000.0], within_ms=1e9) == [
        300.0,
        400.0,
        65_000.0,
    ]
    # The alert service's and MQTT's own stage: from the candidate's log line.
    assert alert_latencies(candidates, arrivals, from_candidate=True) == [200.0, 350.0]


def test_stages_are_read_from_both_agents_lines() -> None:
    log = (
        "[2026-12-01 18:00:00,250] [1] [INFO] seismic ticks triggers=2 packets=40 "
        "wait_ms=120.5 decide_ms=60.0 send_ms=0.4\n"
        "[2026-12-01 18:00:00,400] [1] [INFO] quake candidate latency_ms=300.0 "
        "from_trigger_ms=300.0 to_tick_ms=190.0 tick_wait_ms=15.5 step_ms=94.5\n"
        "[2026-12-01 18:00:00,500] [1] [INFO] seismic ticks triggers=1 packets=3 "
        "wait_ms=-2.0 decide_ms=5.0 send_ms=0.1\n"
    )
    assert stages(log) == {
        "wait_ms": [120.5, -2.0],
        "decide_ms": [60.0, 5.0],
        "send_ms": [0.4, 0.1],
        "to_tick_ms": [190.0],
        "tick_wait_ms": [15.5],
        "step_ms": [94.5],
    }


def _payload() -> SeismicPayload:
    return SeismicPayload(
        ts=datetime(2026, 1, 1, tzinfo=UTC),
        sample_rate_hz=100.0,
        x_gal=[0.1, -0.25, 3.0],
        y_gal=[0.0, 1.5, -2.0],
        z_gal=[9.81, 0.01, 0.0],
    )


def test_packed_line_is_the_processors_point_and_unpacks_to_every_sample() -> None:
    line = packed_line("seis-0001", "63000010", _payload(), 1_000_000_000)
    assert line.startswith("seismic_packet,device=seis-0001,township=63000010 ")
    assert line.endswith(" 1000000000")
    packed = dict(re.findall(r'(\w_gal)="([^"]*)"', line))
    assert unpack is waveform.unpack  # the one packing, not a copy
    assert {k: unpack(v) for k, v in packed.items()} == {
        "x_gal": waveform.stored([0.1, -0.25, 3.0]),
        "y_gal": [0.0, 1.5, -2.0],
        "z_gal": waveform.stored([9.81, 0.01, 0.0]),
    }
    assert "sample_rate_hz=100.0," in line
    assert ",x_peak_gal=3.0,y_peak_gal=2.0,z_peak_gal=9.81 " in line


def test_text_line_holds_every_sample_as_decimals() -> None:
    line = text_line("seis-0001", "63000010", _payload(), 1_000_000_000)
    assert line.startswith("seismic_text,device=seis-0001,township=63000010 ")
    packed = dict(re.findall(r'(\w_gal)="([^"]*)"', line))
    assert {k: text_samples(v) for k, v in packed.items()} == {
        "x_gal": [0.1, -0.25, 3.0],
        "y_gal": [0.0, 1.5, -2.0],
        "z_gal": [9.81, 0.01, 0.0],
    }
    assert text_samples("") == []


def test_per_sample_lines_are_the_layout_before_packing() -> None:
    lines = per_sample_lines("seis-0001", "63000010", _payload(), 1_000_000_000)
    assert lines[1] == (
        "seismic_sample,device=seis-0001,township=63000010 x_gal=-0.25,y_gal=1.5,z_gal=0.01 "
        "1010000000"
    )
    assert len(lines) == 3


def test_lean_lines_are_one_per_sample_in_ms() -> None:
    lines = lean_lines("seis-0001", _payload(), 1_000_000_000)
    assert lines == [
        "seismic_sample,device=seis-0001 x_gal=0.1,y_gal=0.0,z_gal=9.81 1000",
        "seismic_sample,device=seis-0001 x_gal=-0.25,y_gal=1.5,z_gal=0.01 1010",
        "seismic_sample,device=seis-0001 x_gal=3.0,y_gal=-2.0,z_gal=0.0 1020",
    ]
