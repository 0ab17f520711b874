"""A synthetic seismic network over northern Taiwan, shared by the quake replay tests."""

from __future__ import annotations

from simulator.waveforms import SimStation

T0 = 1_700_000_000.0
# Approximate town positions across northern Taiwan (degrees).
STATIONS = [
    SimStation(*s)
    for s in [
        ("TPE", 25.04, 121.56), ("KEL", 25.13, 121.74), ("TSW", 25.17, 121.44),
        ("BQA", 25.01, 121.46), ("TYN", 24.99, 121.30), ("ZLI", 24.96, 121.22),
        ("HSC", 24.80, 120.97), ("ZBE", 24.84, 121.00), ("MLI", 24.56, 120.82),
        ("ILA", 24.76, 121.75), ("LDG", 24.68, 121.77), ("SUA", 24.60, 121.85),
        ("NAO", 24.46, 121.80), ("JXI", 24.83, 121.77), ("TCG", 24.86, 121.82),
        ("PLN", 24.94, 121.71), ("WLI", 24.87, 121.55), ("SXA", 24.93, 121.37),
        ("DXI", 24.88, 121.29), ("FXG", 24.82, 121.35), ("GXI", 24.79, 121.18),
        ("JSH", 24.68, 121.20), ("WFG", 24.64, 121.12), ("DTG", 24.68, 121.60),
        ("TAN", 24.47, 120.99), ("SMN", 25.29, 121.57), ("RFG", 25.11, 121.81),
    ]
]  # fmt: skip
NOISY = "BQA"
