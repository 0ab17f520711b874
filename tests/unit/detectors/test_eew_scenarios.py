"""Earthquake early warning scenarios through the station detectors and the associator,
replayed as the seismic agents send them (``tests/eew_world.py``): offshore, deep, inside
and at the edge of the network, under noise, and human-made bursts.

Pure and fast (20 Hz stations, only those within 250 km, about 45 s of data each). The
bounds and why the physics allows them are in the README's "Earthquake early warning"
section; a bound is never tuned to one scenario.
"""

from __future__ import annotations

from tests.eew_world import Scenario, associate, quake, record


def _key(out):  # type: ignore[no-untyped-def]
    return [
        (u.event_id, u.lat, u.lon, u.depth_km, u.magnitude, u.station_ids, u.computed_at_s,
         u.closed, u.max_intensity, u.townships)
        for u in out.updates
    ]  # fmt: skip


def test_partitions_and_arrival_order_do_not_change_the_event() -> None:
    # Offshore east of Hualien: picks arrive over many seconds from stations spread over
    # every partition, some picks placed before the second that carried them.
    rec = record(Scenario("hualien", quake(23.95, 121.95, 20.0, 6.5)), seed=3)
    one = associate(rec, partitions=1)
    assert len(one.event_ids) == 1
    assert len(one.updates) >= 3
    for partitions, shuffle in ((4, 1), (8, 2)):
        other = associate(rec, partitions=partitions, shuffle=shuffle)
        assert _key(other) == _key(one), (partitions, shuffle)
