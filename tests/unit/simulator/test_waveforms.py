"""A synthetic packet as the payload a seismic station would send."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from simulator.waveforms import Packet


def test_a_packet_is_a_valid_seismic_payload_with_rounded_samples() -> None:
    samples = np.array([[0.123456, -1.5, 980.04449], [2.0, 0.0004, 979.99951]])
    payload = Packet("seis-0001", 1795564800.25, 50.0, samples).payload(decimals=3)
    assert payload.ts == datetime(2026, 11, 25, 0, 0, 0, 250000, tzinfo=UTC)
    assert payload.sample_rate_hz == 50.0
    assert payload.x_gal == [0.123, 2.0]
    assert payload.y_gal == [-1.5, 0.0]
    assert payload.z_gal == [980.044, 980.0]
