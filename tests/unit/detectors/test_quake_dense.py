"""The associator's pair and place searches, done over arrays, against the plain
definitions they replace (a strong quake under a dense network: hundreds of picks in a
step, 615 stations against 2,475 cells)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from processors.detectors.quake import (
    EventStation,
    QuakeConfig,
    _consistent,
    _consistent_pairs,
    _group,
    _sites,
    _spread_picks,
    _within,
    distance_km,
)

THR = QuakeConfig().association


def _picks(rng: random.Random, n: int, *, spread_deg: float, spread_s: float) -> list[EventStation]:
    """Picks around northern Taiwan: some stations closer than a site apart, some picks
    at the same time, the rest scattered."""
    out: list[EventStation] = []
    for k in range(n):
        if out and rng.random() < 0.15:
            twin = rng.choice(out)  # a neighbour on the same floor, or the same second
            lat, lon = twin.lat + rng.uniform(-0.005, 0.005), twin.lon
            t = twin.p_time_s if rng.random() < 0.5 else twin.p_time_s + rng.uniform(0, 0.3)
        else:
            lat = 24.8 + rng.uniform(-spread_deg, spread_deg)
            lon = 121.5 + rng.uniform(-spread_deg, spread_deg)
            t = 1000.0 + rng.uniform(0, spread_s)
        out.append(EventStation(f"st-{rng.randrange(10**6):06d}-{k}", lat, lon, t, True))
    return out


def _plain_group(anchor: EventStation, pool: list[EventStation]) -> list[EventStation]:
    group = [anchor]
    others = sorted(
        (u for u in pool if u.station_id != anchor.station_id and _consistent(anchor, u, THR)),
        key=lambda u: (abs(u.p_time_s - anchor.p_time_s), u.station_id),
    )
    for u in others:
        if all(_consistent(u, g, THR) for g in group[1:]):
            group.append(u)
    return group


def _plain_sites(picks: list[EventStation]) -> int:
    kept: list[EventStation] = []
    for s in picks:
        if all(float(distance_km(s.lat, s.lon, k.lat, k.lon)) >= THR.min_site_km for k in kept):
            kept.append(s)
    return len(kept)


@pytest.mark.parametrize("seed", range(6))
def test_every_anchor_groups_as_the_pairwise_definition_does(seed: int) -> None:
    rng = random.Random(seed)
    picks = _picks(
        rng, 60, spread_deg=rng.choice([0.3, 1.0, 2.0]), spread_s=rng.choice([3.0, 20.0])
    )
    picks.sort(key=lambda u: (u.p_time_s, u.station_id))
    consistent = _consistent_pairs(picks, THR)
    ranks = np.empty(len(picks), dtype=np.intp)
    ranks[sorted(range(len(picks)), key=lambda i: picks[i].station_id)] = np.arange(len(picks))
    sizes = []
    for anchor in range(len(picks)):
        fast = [picks[i] for i in _group(anchor, picks, consistent, ranks)]
        assert fast == _plain_group(picks[anchor], picks)
        sizes.append(len(fast))
    # Some anchors group several picks, some stand alone: both paths are exercised.
    assert max(sizes) >= 3


def test_an_anchor_that_cannot_beat_the_best_group_is_not_grouped() -> None:
    picks = _picks(random.Random(1), 30, spread_deg=0.3, spread_s=3.0)
    consistent = _consistent_pairs(picks, THR)
    ranks = np.arange(len(picks), dtype=np.intp)
    full = _group(0, picks, consistent, ranks)
    assert _group(0, picks, consistent, ranks, best=len(full) - 1) == full
    assert _group(0, picks, consistent, ranks, best=len(picks)) == []


@pytest.mark.parametrize("seed", range(4))
def test_sites_count_as_the_greedy_definition_does(seed: int) -> None:
    picks = _picks(random.Random(seed), 80, spread_deg=0.2, spread_s=5.0)
    assert _sites(picks, THR) == _plain_sites(picks)
    assert _sites([], THR) == 0


@pytest.mark.parametrize("km", [0.0, 10.0, 15.0, 200.0])
def test_places_within_reach_are_exactly_the_pairs_the_full_matrix_finds(km: float) -> None:
    rng = np.random.default_rng(int(km))
    # A 0.1 deg grid as the warning region's cells, and stations, some on a cell centre.
    lat_c, lon_c = np.meshgrid(
        np.arange(23.0, 25.0, 0.1) + 0.05, np.arange(120.5, 122.0, 0.1) + 0.05
    )
    lat, lon = lat_c.ravel(), lon_c.ravel()
    s_lat = np.concatenate((rng.uniform(22.5, 25.5, 120), lat[:5]))
    s_lon = np.concatenate((rng.uniform(120.0, 122.5, 120), lon[:5]))
    i, j, d = _within(lat, lon, s_lat, s_lon, km)
    full = distance_km(lat[:, None], lon[:, None], s_lat[None, :], s_lon[None, :])
    want = set(zip(*np.nonzero(full <= km), strict=True))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in want}
    assert np.allclose(d, full[i, j], rtol=1e-12, atol=1e-9)
    if km >= 10.0:
        assert len(want) > 0


def test_a_location_takes_every_pick_up_to_its_bound() -> None:
    cfg = QuakeConfig()
    picks = _picks(random.Random(3), cfg.max_location_picks, spread_deg=0.2, spread_s=5.0)
    assert _spread_picks(picks, cfg) == sorted(picks, key=lambda u: (u.p_time_s, u.station_id))


def test_beyond_its_bound_a_location_takes_each_neighbourhood_before_a_second_pick_there() -> None:
    """Towns of eight stations each (a dense network): the first picks by time are the
    nearest towns' only; the location takes a pick from every town first."""
    cfg = QuakeConfig()
    rng = random.Random(4)
    towns = [(24.2 + 0.15 * a, 120.9 + 0.15 * b) for a in range(6) for b in range(6)]
    picks = []
    for k, (lat, lon) in enumerate(towns):
        # P reaches the towns in order of their distance from the south-west corner.
        t0 = 1000.0 + float(distance_km(24.2, 120.9, lat, lon)) / 6.0
        for m in range(8):
            picks.append(
                EventStation(
                    f"t{k:02d}-{m}",
                    lat + rng.uniform(-0.01, 0.01),
                    lon + rng.uniform(-0.01, 0.01),
                    t0 + rng.uniform(0.0, 0.3),
                    True,
                )
            )
    use = _spread_picks(picks, cfg)
    assert len(use) == cfg.max_location_picks
    assert use == sorted(use, key=lambda u: (u.p_time_s, u.station_id))
    towns_used = {u.station_id.split("-")[0] for u in use}
    by_time = sorted(picks, key=lambda u: (u.p_time_s, u.station_id))[: cfg.max_location_picks]
    assert len(towns_used) == len(towns)  # every town, where time alone took a few
    assert len({u.station_id.split("-")[0] for u in by_time}) < len(towns) // 3
    # Each town's first pick is among them.
    for k in range(len(towns)):
        town = [u for u in picks if u.station_id.startswith(f"t{k:02d}-")]
        assert min(town, key=lambda u: (u.p_time_s, u.station_id)) in use
