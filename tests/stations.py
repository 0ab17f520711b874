"""Synthetic seismic networks for the earthquake tests and the EEW benchmark.

Positions are approximate town positions (degrees), good enough for a synthetic world;
ids and township codes are made up.

- :data:`STATIONS`: 27 stations over northern Taiwan (the replay tests' network).
- :data:`TAIWAN`: about 60 stations over the whole island and its islets, the kind of
  network whose edge the offshore quakes east of Hualien, Yilan and Taitung fall outside.
- :data:`TOWNS`: township centroids over the island, for the public warning per place.
"""

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

# The whole island: the north above, plus the west, the central mountains, the east coast
# and the islets (Green Island, Orchid Island, Penghu).
TAIWAN = [
    *STATIONS,
    *(
        SimStation(*s)
        for s in [
            ("TCH", 24.15, 120.68), ("CHH", 24.08, 120.54), ("NTO", 23.91, 120.68),
            ("PUL", 23.97, 120.96), ("DLI", 23.71, 120.54), ("CYI", 23.48, 120.45),
            ("ALS", 23.51, 120.80), ("TNN", 22.99, 120.21), ("KHH", 22.63, 120.30),
            ("PTG", 22.67, 120.49), ("FLI", 22.37, 120.59), ("HCN", 22.00, 120.74),
            ("LSH", 24.25, 121.25), ("YSH", 23.47, 120.96), ("HEP", 24.30, 121.75),
            ("TRK", 24.15, 121.62), ("HUA", 23.98, 121.60), ("SFG", 23.87, 121.51),
            ("FLN", 23.74, 121.45), ("FBN", 23.60, 121.52), ("RSI", 23.50, 121.38),
            ("CBN", 23.32, 121.45), ("YLI", 23.33, 121.31), ("CGO", 23.10, 121.37),
            ("CSG", 23.10, 121.22), ("DHE", 22.97, 121.30), ("LYE", 22.91, 121.14),
            ("TTT", 22.75, 121.15), ("TML", 22.61, 121.00), ("DWU", 22.34, 120.89),
            ("GRN", 22.66, 121.49), ("LYU", 22.05, 121.55), ("PHU", 23.57, 119.58),
        ]
    ),
]  # fmt: skip

# Township centroids (codes made up) for the warning per place, island-wide.
TOWNS = [
    (f"T{i:03d}", s.lat, s.lon)
    for i, s in enumerate(
        SimStation(*t)
        for t in [
            ("Taipei", 25.04, 121.53), ("Keelung", 25.13, 121.74), ("Tamsui", 25.17, 121.44),
            ("Taoyuan", 24.99, 121.30), ("Hsinchu", 24.80, 120.97), ("Miaoli", 24.56, 120.82),
            ("Yilan", 24.76, 121.75), ("Luodong", 24.68, 121.77), ("Suao", 24.60, 121.85),
            ("Nanao", 24.46, 121.80), ("Toucheng", 24.86, 121.82), ("Taichung", 24.15, 120.68),
            ("Changhua", 24.08, 120.54), ("Nantou", 23.91, 120.68), ("Puli", 23.97, 120.96),
            ("Douliu", 23.71, 120.54), ("Chiayi", 23.48, 120.45), ("Tainan", 22.99, 120.21),
            ("Kaohsiung", 22.63, 120.30), ("Pingtung", 22.67, 120.49),
            ("Hengchun", 22.00, 120.74), ("Hualien", 23.98, 121.60),
            ("Xincheng", 24.13, 121.64), ("Shoufeng", 23.87, 121.51),
            ("Fenglin", 23.74, 121.45), ("Yuli", 23.33, 121.31), ("Chenggong", 23.10, 121.37),
            ("Taitung", 22.75, 121.15), ("Dawu", 22.34, 120.89), ("Green Island", 22.66, 121.49),
            ("Orchid Island", 22.05, 121.55), ("Magong", 23.57, 119.58),
        ]
    )
]  # fmt: skip
