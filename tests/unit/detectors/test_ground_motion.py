"""The synthetic world's ground motion against the detector's models, through the station
detector: the PGA the simulator pins to the shared attenuation, and the PGV that comes
out of its S spectrum (Brune source, Boore 2003) against the detector's published PGV
relation (Si & Midorikawa 1999). Neither side is fit to the other: a factor of two
(about 1.3 sigma of the PGV relation) is what two independent models may differ by.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from processors.detectors.quake import GroundMotionModel
from processors.detectors.seismic import SeismicConfig, StationState, process_packet
from simulator.waveforms import SimQuake, SimStation, WaveModel, synthesize_packets

DEPTH_KM = 15.0
EPICENTRAL_KM = (15.0, 40.0, 80.0)


def _peaks(magnitude: float) -> dict[float, tuple[float, float]]:
    """Epicentral distance -> geometric mean (PGA gal, PGV cm/s) of four stations around
    the epicentre, as the station detector measures them (20 Hz)."""
    lat0, lon0 = 24.0, 121.0
    stations = []
    for i, d in enumerate(EPICENTRAL_KM):
        for j in range(4):
            az = j * math.pi / 2
            stations.append(
                SimStation(
                    f"S{i}{j}",
                    lat0 + d * math.cos(az) / 111.2,
                    lon0 + d * math.sin(az) / (111.2 * math.cos(math.radians(lat0))),
                )
            )
    quake = SimQuake(lat0, lon0, DEPTH_KM, magnitude, 1014.0)
    packets = synthesize_packets(
        stations,
        start_s=1000.0,
        duration_s=14.0 + 60.0,
        sample_rate_hz=20.0,
        quake=quake,
        model=WaveModel(site_sigma_log10=0.0),
        seed=7,
    )
    states = {s.station_id: StationState() for s in stations}
    peak: dict[str, tuple[float, float]] = {}
    for p in packets:
        res = process_packet(states[p.station_id], p.samples, 20.0, p.t0_s, SeismicConfig())
        states[p.station_id] = res.state
        obs = res.observation(p.station_id)
        if obs is not None:
            a, v = peak.get(p.station_id, (0.0, 0.0))
            peak[p.station_id] = (max(a, obs.pga_gal), max(v, obs.pgv_cms))
    out = {}
    for i, d in enumerate(EPICENTRAL_KM):
        got = np.array([peak.get(f"S{i}{j}", (1e-6, 1e-6)) for j in range(4)])
        out[d] = (float(np.exp(np.log(got[:, 0]).mean())), float(np.exp(np.log(got[:, 1]).mean())))
    return out


@pytest.mark.parametrize("magnitude", [5.5, 6.5, 7.3])
def test_synthetic_pgv_follows_the_published_relation(magnitude: float) -> None:
    gm = GroundMotionModel()
    for d, (pga, pgv) in _peaks(magnitude).items():
        r = np.array([math.hypot(d, DEPTH_KM)])
        assert pga == pytest.approx(float(gm.pga_gal(magnitude, r)[0]), rel=0.1), d
        model = float(gm.pgv_cms(magnitude, r, DEPTH_KM)[0])
        assert 0.5 <= pgv / model <= 2.0, (magnitude, d, pgv, model)


def test_pgv_grows_faster_than_pga_with_magnitude() -> None:
    # The corner frequency falls with magnitude: a large quake's extra energy is at low
    # frequencies, which PGV sees and PGA hardly does (a fixed band would scale both alike).
    small, large = _peaks(5.5)[40.0], _peaks(7.3)[40.0]
    assert large[1] / small[1] > 2.0 * (large[0] / small[0])
