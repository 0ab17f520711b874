"""The locator's and the magnitudes' array forms against the plain definitions they
replace: a strong quake under Taiwan's 615 stations relocates with 40 picks and a hundred
silent stations every second, and each relocation tries thousands of hypocentres."""

from __future__ import annotations

import numpy as np
import pytest

from processors.detectors.quake import (
    EventStation,
    GroundMotionModel,
    QuakeConfig,
    _Constraints,
    _costs_for,
    _crossings,
    _first_apart,
    _heard,
    _interp_rows,
    _median_last,
    _tau_c_curve,
    _within,
    distance_km,
    grid_distance_km,
    magnitude_from_tau_c,
    magnitudes_from_tau_c,
    pa_reading,
)

CFG = QuakeConfig()
THR = CFG.association


def _plain_costs(
    g_lat: np.ndarray,
    g_lon: np.ndarray,
    depths: np.ndarray,
    p_lat: np.ndarray,
    p_lon: np.ndarray,
    p_t: np.ndarray,
    cons: _Constraints,
    sigmas: tuple[float, ...],
) -> tuple[list[np.ndarray], np.ndarray]:
    """The cost as its docstring defines it, every (hypocentre, pick) and every
    (hypocentre, silent station) pair worked out in full."""
    thr = THR
    z2 = (depths**2)[:, None, None]
    epi = distance_km(g_lat[:, None], g_lon[:, None], p_lat[None, :], p_lon[None, :])
    tt = np.sqrt(epi[None] ** 2 + z2) / thr.vp_kms
    origin = np.median(p_t[None, None, :] - tt, axis=2)
    delay = p_t[None, None, :] - tt - origin[:, :, None]
    prior = ((depths[:, None] - thr.depth_prior_km) / thr.depth_prior_sigma_km) ** 2
    out = []
    epi_c = distance_km(g_lat[:, None], g_lon[:, None], cons.lat[None, :], cons.lon[None, :])
    tt_c = np.sqrt(epi_c[None] ** 2 + z2) / thr.vp_kms
    tp_c = origin[:, :, None] + tt_c
    limit = np.minimum(cons.until_s, cons.now_s)[None, None, :] - thr.unpicked_margin_s
    late = (tp_c >= cons.since_s) & (tp_c < limit) & (tt_c < tt.max(axis=2, keepdims=True))
    if cons.magnitude is not None:
        read = pa_reading(cons.magnitude, thr)  # the first seconds' P amplitude
        seen = thr.p_to_s_ratio * cons.ground_motion.pga_gal(read, tt_c * thr.vp_kms)
        late &= seen >= thr.unpicked_min_pa_snr * np.maximum(cons.noise_gal, 1e-3)
    for sigma in sigmas:
        res = delay / sigma
        v = np.where(late, np.minimum(limit - tp_c, 3.0 * sigma), 0.0) / sigma
        out.append(np.sum(np.minimum(res * res, 9.0), axis=2) + prior + np.sum(v * v, axis=2))
    return out, origin


def _geometry(
    rng: np.random.Generator, n_picks: int, n_silent: int, magnitude: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Constraints]:
    """Picks of a quake somewhere in the region (timed by the model, with pick noise and
    a few outliers) and silent stations around, some armed late, some with old data."""
    q_lat, q_lon, q_z = rng.uniform(22.0, 25.5), rng.uniform(120.0, 122.8), rng.uniform(0, 90)
    lat = q_lat + rng.uniform(-0.8, 0.8, n_picks + n_silent)
    lon = q_lon + rng.uniform(-0.8, 0.8, n_picks + n_silent)
    r = np.hypot(distance_km(q_lat, q_lon, lat, lon), q_z)
    t = 1000.0 + r / THR.vp_kms + rng.normal(0, 0.2, r.size)
    t[rng.random(r.size) < 0.1] += rng.uniform(2, 8)  # an S taken for P
    now = float(np.sort(t[:n_picks])[-1]) + rng.uniform(0, 3)
    cons = _Constraints(
        lat=lat[n_picks:],
        lon=lon[n_picks:],
        since_s=np.where(rng.random(n_silent) < 0.2, now - 1.0, 0.0),
        until_s=now - rng.uniform(0, 4, n_silent),
        now_s=now,
        noise_gal=rng.uniform(0.01, 2.0, n_silent),
        magnitude=magnitude,
        ground_motion=GroundMotionModel(),
    )
    return lat[:n_picks], lon[:n_picks], t[:n_picks], cons


@pytest.mark.parametrize("seed", range(8))
def test_costs_of_a_grid_are_the_plain_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_picks = int(rng.integers(3, 41))
    n_silent = int(rng.integers(0, 120))
    magnitude = None if seed % 2 else float(rng.uniform(4.5, 7.5))
    p_lat, p_lon, p_t, cons = _geometry(rng, n_picks, n_silent, magnitude)
    step = float(rng.choice([0.2, 0.05, 0.0125]))
    lat_ax = float(np.mean(p_lat)) + step * np.arange(-4, 5 + int(rng.integers(0, 8)))
    lon_ax = float(np.mean(p_lon)) + step * np.arange(-6, 4)
    depths = np.unique(np.clip(rng.uniform(0, 100, 7), 0, 100))
    sigmas = (THR.pick_sigma_s, 1.7)
    got, origin = _costs_for(lat_ax, lon_ax, depths, p_lat, p_lon, p_t, cons, THR, sigmas)
    g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_ax, lon_ax, indexing="ij"))
    want, want_origin = _plain_costs(g_lat, g_lon, depths, p_lat, p_lon, p_t, cons, sigmas)
    np.testing.assert_allclose(origin, want_origin, rtol=0, atol=1e-9)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (depths.size, lat_ax.size * lon_ax.size)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-9)


def test_the_geometries_above_do_make_silent_stations_late() -> None:
    """The comparison above would not see the silent stations' term dropped unless some
    of its geometries put them late."""
    mattered = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n_picks, n_silent = int(rng.integers(3, 41)), int(rng.integers(0, 120))
        magnitude = None if seed % 2 else float(rng.uniform(4.5, 7.5))
        p_lat, p_lon, p_t, cons = _geometry(rng, n_picks, n_silent, magnitude)
        lat_ax = float(np.mean(p_lat)) + 0.2 * np.arange(-4, 5)
        lon_ax = float(np.mean(p_lon)) + 0.2 * np.arange(-4, 5)
        depths = np.array([10.0, 40.0])
        with_c, _ = _costs_for(lat_ax, lon_ax, depths, p_lat, p_lon, p_t, cons, THR, (0.5,))
        bare, _ = _costs_for(
            lat_ax, lon_ax, depths, p_lat, p_lon, p_t, _Constraints.none(), THR, (0.5,)
        )
        mattered += int(np.any(with_c[0] > bare[0]))
    assert mattered >= 4


def test_a_grid_s_distances_are_every_point_s() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        lat_ax = rng.uniform(21, 26) + 0.0125 * np.arange(int(rng.integers(1, 18)))
        lon_ax = rng.uniform(119, 123) + 0.05 * np.arange(int(rng.integers(1, 18)))
        lat, lon = rng.uniform(21, 26.5, 50), rng.uniform(119, 123.5, 50)
        g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_ax, lon_ax, indexing="ij"))
        np.testing.assert_allclose(
            grid_distance_km(lat_ax, lon_ax, lat, lon),
            distance_km(g_lat[:, None], g_lon[:, None], lat[None, :], lon[None, :]),
            rtol=1e-12,
            atol=1e-9,
        )


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40])
def test_the_median_of_the_last_axis_is_numpy_s(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(3, 11, n))
    x[0, 0, :] = 5.0  # ties
    assert np.array_equal(_median_last(x), np.median(x, axis=-1))


def test_rows_interpolate_as_numpy_does_knots_and_ends_included() -> None:
    gm = GroundMotionModel()
    grid = np.linspace(1.0, 9.5, 426)
    rng = np.random.default_rng(0)
    r = rng.uniform(1, 400, 200)
    curves = gm._log_pga(grid[None, :], r[:, None])
    x = np.log10(10 ** rng.uniform(-6, 3.5, r.size))
    knot = rng.integers(0, grid.size, r.size)
    on = rng.random(r.size) < 0.3
    x[on] = curves[np.flatnonzero(on), knot[on]]  # exactly on a knot, the ends included
    x[:2] = curves[:2, -1]
    x[2:4] = curves[2:4, 0]
    x[4] = np.nan
    want = np.array([np.interp(v, c, grid) for v, c in zip(x, curves, strict=True)])
    assert np.array_equal(_interp_rows(x, curves, grid), want, equal_nan=True)


def test_tau_c_magnitudes_of_many_windows_are_each_one_s() -> None:
    rng = np.random.default_rng(5)
    taus = rng.uniform(0.1, 3.0, 60)
    windows = rng.choice([0.6, 1.0, 1.24, 1.26, 2.0, 3.0, 4.5], 60)
    got = magnitudes_from_tau_c(taus.tolist(), windows.tolist(), CFG)
    for t, w, m in zip(taus, windows, got, strict=True):
        window = min(max(round(w * 2.0) / 2.0, 0.5), CFG.pd_window_s)
        curve, mags = _tau_c_curve(window, CFG.station_highpass_hz, THR.pd_highpass_hz)
        assert m == float(np.interp(t, curve, mags))
        assert m == magnitude_from_tau_c(float(t), float(w), CFG)


@pytest.mark.parametrize("seed", range(4))
def test_magnitudes_from_pga_are_the_whole_curves_numbers(seed: int) -> None:
    """Four knots per station found by bisection: the numbers of the 426-knot curves,
    to the last bit, targets on knots, at the ends, beyond them, NaN and zero included."""
    gm = GroundMotionModel()
    grid = np.linspace(1.0, 9.5, 426)
    rng = np.random.default_rng(seed)
    r = np.concatenate((rng.uniform(1, 600, 300), rng.uniform(0, 2, 20), [1.0, 0.0, np.nan]))
    pga = 10 ** rng.uniform(-8, 5, r.size)
    on = rng.random(r.size) < 0.3
    pga[on] = 10 ** gm._log_pga(grid[rng.integers(0, grid.size, int(on.sum()))], r[on])
    pga[:5] = [0.0, np.inf, np.nan, 1e-6, -1.0]
    pga[5] = 10 ** float(gm._log_pga(grid[-1], r[5]))
    curves = gm._log_pga(grid[None, :], r[:, None])
    target = np.log10(np.maximum(pga, 1e-6))
    want = _interp_rows(target, curves, grid)
    got = gm.magnitude_from_pga(pga, r)
    assert got.tobytes() == want.tobytes()
    assert gm.magnitude_from_pga(np.zeros(0), np.zeros(0)).shape == (0,)


@pytest.mark.parametrize("seed", range(6))
def test_heard_is_the_amplitude_against_the_bar_wherever_asked(seed: int) -> None:
    """Decided from each station's crossing distance, evaluated near it: the same
    booleans as the amplitude of every pair, with distances put right at the
    crossings, bars of zero, NaN and infinity, and the few-pairs path."""
    gm = GroundMotionModel()
    rng = np.random.default_rng(seed)
    magnitude = float(rng.uniform(2.0, 8.5))
    noise = rng.uniform(0.0, 5.0, 60)
    noise[:4] = [0.0, np.nan, np.inf, 1e-9]
    bar = THR.unpicked_min_pa_snr * np.maximum(noise, 1e-3)
    for pairs in (50, 3000):
        station = rng.integers(0, bar.size, pairs)
        r = rng.uniform(0, float(rng.uniform(1, 800)), (4, pairs))
        lo, hi = _crossings(gm, magnitude, THR.p_to_s_ratio, bar)
        at = np.flatnonzero(np.isfinite(lo[station]) & np.isfinite(hi[station]))[:200]
        r[0, at] = lo[station[at]] + rng.uniform(-0.05, 0.05, at.size)  # at the crossing
        r = np.maximum(r, 0.0)
        asked = rng.random(r.shape) < 0.7
        want = THR.p_to_s_ratio * gm.pga_gal(magnitude, r) >= bar[station]
        got = _heard(gm, magnitude, THR.p_to_s_ratio, r, bar, station, asked)
        assert np.array_equal(got[asked], want[asked])


def _first_apart_by_pairs(picks: list[EventStation], km: float, closer: bool) -> list[int]:
    """The greedy choice from every pair within ``km`` (:func:`_within`)."""
    lat = np.array([s.lat for s in picks])
    lon = np.array([s.lon for s in picks])
    i, j, d = _within(lat, lon, lat, lon, km)
    near = d < km if closer else d <= km
    covered = np.zeros(len(picks), dtype=np.bool_)
    first: list[int] = []
    for k in range(len(picks)):
        if not covered[k]:
            first.append(k)
            covered[j[near & (i == k)]] = True
    return first


@pytest.mark.parametrize("seed", range(4))
def test_first_picks_apart_are_those_all_pairs_give(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Stations in a few towns, as a dense network's are, some on the same spot.
    towns = rng.uniform([22.5, 120.3], [25.2, 121.9], (12, 2))
    at = towns[rng.integers(0, len(towns), n)] + rng.normal(0, 0.05, (n, 2))
    at[rng.random(n) < 0.05] = at[0]
    picks = [
        EventStation(f"s{k}", float(a), float(o), float(k), True) for k, (a, o) in enumerate(at)
    ]
    for km, closer in ((10.0, False), (3.0, True), (10.0, True)):
        want = _first_apart_by_pairs(picks, km, closer)
        assert _first_apart(picks, km, closer=closer) == want
        for most in (1, 5, 40):
            assert _first_apart(picks, km, most=most, closer=closer) == want[:most]
